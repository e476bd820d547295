//! The CLI as a `nats` user expects it: `--url` and `--token` work before or after the
//! subcommand, and `wharf --help` and every subcommand's help describe each argument and
//! end with two or three examples.

use std::process::Command;

use wharf_tests::{data_dir, wharf_bin, Broker};

fn help(path: &[&str]) -> String {
    let out = Command::new(wharf_bin())
        .args(path)
        .arg("--help")
        .env_remove("WHARF_URL")
        .env_remove("WHARF_TOKEN")
        .output()
        .expect("run wharf --help");
    assert!(out.status.success(), "wharf {path:?} --help: {out:?}");
    String::from_utf8(out.stdout).expect("UTF-8 help")
}

/// The lines of a help section (`Commands:`, `Options:`, …) up to the next blank-line-free
/// heading.
fn section<'a>(text: &'a str, heading: &str) -> Vec<&'a str> {
    let mut lines = text.lines().skip_while(|l| *l != heading);
    if lines.next().is_none() {
        return Vec::new();
    }
    lines
        .take_while(|l| l.is_empty() || l.starts_with(' '))
        .collect()
}

/// Every argument entry in `Arguments:` and `Options:` has a description, on its line or
/// the next one.
fn undocumented(text: &str) -> Vec<String> {
    let mut missing = Vec::new();
    for heading in ["Arguments:", "Options:"] {
        let lines = section(text, heading);
        for (i, line) in lines.iter().enumerate() {
            let entry = line.trim_start();
            let indent = line.len() - entry.len();
            let is_entry = indent <= 6
                && (entry.starts_with('-') || entry.starts_with('<') || entry.starts_with('['));
            if !is_entry {
                continue;
            }
            let inline = entry
                .split_once("  ")
                .is_some_and(|(_, d)| !d.trim().is_empty());
            let below = lines.get(i + 1).is_some_and(|next| {
                next.len() - next.trim_start().len() > 6 && !next.trim().is_empty()
            });
            if !inline && !below {
                missing.push(line.to_string());
            }
        }
    }
    missing
}

fn check(path: &[&str], seen: &mut Vec<String>) {
    let text = help(path);
    let name = format!("wharf {}", path.join(" "));
    seen.push(name.clone());
    let missing = undocumented(&text);
    assert!(
        missing.is_empty(),
        "{name}: undocumented {missing:?}\n{text}"
    );
    let examples: Vec<&str> = section(&text, "Examples:")
        .into_iter()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(
        (2..=3).contains(&examples.len()) && examples.iter().all(|e| e.contains("wharf ")),
        "{name}: help must end with two or three examples\n{text}"
    );
    assert!(
        text.trim_end().ends_with(examples[examples.len() - 1]),
        "{name}: the examples come last\n{text}"
    );
    for line in section(&text, "Commands:") {
        let Some(sub) = line.split_whitespace().next() else {
            continue;
        };
        if sub == "help" {
            continue;
        }
        let mut deeper = path.to_vec();
        deeper.push(sub);
        check(&deeper, seen);
    }
}

#[test]
fn every_command_describes_its_arguments_and_ends_with_examples() {
    let mut seen = Vec::new();
    check(&[], &mut seen);
    for expected in [
        "wharf publish",
        "wharf consumer info",
        "wharf token hash",
        "wharf serve",
    ] {
        assert!(
            seen.iter().any(|s| s == expected),
            "{expected} not reached: {seen:?}"
        );
    }
    let top = help(&[]);
    for flag in ["--url", "--token"] {
        assert!(top.contains(flag), "{top}");
    }
}

#[test]
fn url_and_token_work_before_or_after_the_subcommand() {
    let hash = Command::new(wharf_bin())
        .args(["token", "hash", "ops-secret-0123456789"])
        .output()
        .expect("wharf token hash");
    let hash = String::from_utf8_lossy(&hash.stdout).trim().to_owned();
    let (_tmp, data) = data_dir();
    let broker = Broker::start(
        &data,
        &format!(
            "[auth]\nenabled = true\n[[auth.tokens]]\nname = \"ops\"\nsha256 = \"{hash}\"\n\
             publish = [\">\"]\nsubscribe = [\">\"]\nconsumers = [\"*\"]\n"
        ),
    );
    let url = broker.url.as_str();
    let wharf = |args: &[&str]| {
        Command::new(wharf_bin())
            .args(args)
            .env_remove("WHARF_URL")
            .env_remove("WHARF_TOKEN")
            .output()
            .expect("run wharf")
    };
    let orders = [
        vec![
            "--url",
            url,
            "--token",
            "ops-secret-0123456789",
            "publish",
            "orders.a",
            "1",
        ],
        vec![
            "publish",
            "orders.a",
            "2",
            "--url",
            url,
            "--token",
            "ops-secret-0123456789",
        ],
        vec![
            "--token",
            "ops-secret-0123456789",
            "publish",
            "--url",
            url,
            "orders.a",
            "3",
        ],
    ];
    for (n, args) in orders.iter().enumerate() {
        let out = wharf(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            (n + 1).to_string()
        );
    }
    let out = wharf(&[
        "--url",
        url,
        "consumer",
        "--token",
        "ops-secret-0123456789",
        "delete",
        "nobody",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not_found"),
        "the flags reached the nested subcommand: {out:?}"
    );
    let out = wharf(&["publish", "orders.a", "4", "--url", url]);
    assert!(!out.status.success(), "no token, no publish: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unauthorized"),
        "{out:?}"
    );
}
