//! `wharf-compare --quick` runs every scenario against wharf and each peer installed here
//! (all of them where WHARF_REQUIRE_PEERS=1, as in CI), the cluster systems included (one
//! and two wharf nodes over a 3-node NATS cluster, and raw JetStream R3), and prints one
//! figure per system and scenario. No timing is asserted.

use std::process::Command;

use serde_json::Value;

fn installed(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok()
}

#[test]
fn every_system_runs_every_scenario() {
    let require = std::env::var("WHARF_REQUIRE_PEERS").is_ok_and(|v| v == "1");
    let mut systems = vec!["wharf"];
    for (system, program) in [
        ("nats", "nats-server"),
        ("nats-always", "nats-server"),
        ("redis", "redis-server"),
        // On a 3-node NATS cluster the runner starts: one and two wharf nodes, and raw
        // JetStream R3.
        ("wharf-nats", "nats-server"),
        ("wharf-nats2", "nats-server"),
        ("jetstream-r3", "nats-server"),
        ("jetstream-r3-acked", "nats-server"),
    ] {
        if installed(program) {
            systems.push(system);
        } else {
            assert!(
                !require,
                "{program} is not installed and WHARF_REQUIRE_PEERS=1"
            );
            eprintln!("skipping {system}: {program} is not installed (bench/run.sh installs it)");
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_wharf-compare"))
        .args(["--quick", "--json", "--systems", &systems.join(",")])
        .arg("--wharf")
        .arg(wharf_tests::wharf_bin())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let figures: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON figure per line"))
        .collect();
    for system in &systems {
        for scenario in ["publish", "replay", "latency", "fanout"] {
            if *system == "nats-always" && scenario == "fanout" {
                continue; // core NATS has no sync setting; measured once under "nats"
            }
            let f = figures
                .iter()
                .find(|f| f["system"] == *system && f["scenario"] == scenario)
                .unwrap_or_else(|| panic!("no {scenario} figure for {system}: {figures:?}"));
            assert!(f["rate"].as_f64().unwrap() > 0.0, "{f}");
            assert!(!f["durability"].as_str().unwrap().is_empty(), "{f}");
            if system.starts_with("wharf-nats") {
                // The CPU the wharf nodes spent is read (its value is not asserted).
                assert!(f["wharf_cpu_us"].is_number(), "{f}");
            }
        }
    }
}
