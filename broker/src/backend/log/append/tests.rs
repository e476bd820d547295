//! The log on its own: group commit, recovery, torn tails and damage.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::recover::CLEAN_STOP_FILE;
use super::*;

#[derive(Clone, Default)]
struct Collect(Arc<Mutex<Vec<(usize, Position)>>>);

impl CommitSink for Collect {
    fn committed(&mut self, records: Vec<Record>, end: Position) {
        self.0.lock().unwrap().push((records.len(), end));
    }

    fn checkpoint(&mut self) -> Vec<Record> {
        vec![Record::Checkpoint {
            consumers: Vec::new(),
        }]
    }

    fn gaps(&mut self, _first_seq: u64) -> Vec<Record> {
        Vec::new()
    }
}

fn event(i: u64) -> Record {
    Record::Events(vec![Event::new(
        "t.a".into(),
        format!("{{\"i\":{i}}}"),
        1000 + i,
        None,
    )])
}

fn recover_all(dir: &Path) -> Result<(Recovery, Vec<Record>), LogError> {
    let mut records = Vec::new();
    let recovery = recover(
        dir,
        0,
        |rec, _| {
            records.push(rec.clone());
            Ok(())
        },
        |_| {
            Some(vec![Record::Checkpoint {
                consumers: Vec::new(),
            }])
        },
    )?;
    Ok((recovery, records))
}

async fn write_events(dir: &Path, n: u64, segment_bytes: u64) -> Collect {
    let (recovery, _) = recover_all(dir).unwrap();
    let first = recovery.next_seq;
    let sink = Collect::default();
    let options = LogOptions {
        segment_bytes,
        dedup_window_ms: 60_000,
        dedup_max_entries: 1000,
        relaxed_sync: None,
        retention: Retention::default(),
        queue_depth: 64,
    };
    let log = AppendLog::start(dir, recovery, options, Box::new(sink.clone())).unwrap();
    let mut pending = Vec::new();
    for i in 0..n {
        pending.push(log.submit(vec![event(first + i)]).await.unwrap());
    }
    for (i, p) in pending.into_iter().enumerate() {
        assert_eq!(
            p.await.unwrap().unwrap(),
            vec![Receipt::Seqs(vec![(first + i as u64, false)])]
        );
    }
    log.close().await;
    sink
}

fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    segment::list(dir)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

#[tokio::test]
async fn pipelined_appends_share_syncs_and_survive_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let sink = write_events(&dir, 500, 8 << 10).await;
    let commits = sink.0.lock().unwrap().len();
    assert!(commits < 500, "{commits} syncs for 500 pipelined appends");
    assert!(segment_files(&dir).len() > 1, "small segments should roll");

    let (recovery, records) = recover_all(&dir).unwrap();
    assert_eq!(recovery.next_seq, 501);
    assert!(recovery.torn_tail.is_none());
    let seqs: Vec<u64> = records
        .iter()
        .filter_map(|r| match r {
            Record::Events(e) => Some(e[0].seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, (1..=500).collect::<Vec<_>>());

    // Reading back from any seq, across segments, in order.
    let table: SegmentTable = Arc::new(std::sync::RwLock::new(recovery.segments));
    let mut cursor = EventCursor::new(table, 123);
    let mut out = Vec::new();
    while cursor.next_seq() <= 500 {
        cursor.read(500, 100, &mut out).unwrap();
    }
    assert_eq!(out.first().map(|e| e.seq), Some(123));
    assert_eq!(out.len(), 378);
    assert!(out.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    assert_eq!(
        cursor.first_at_or_after(1000 + 250, 500).unwrap(),
        Some(250)
    );
    assert_eq!(cursor.first_at_or_after(99_999, 500).unwrap(), None);
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_writing_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    write_events(&dir, 10, 64 << 20).await;
    // A crash, not a clean stop: no record of one.
    std::fs::remove_file(dir.join(CLEAN_STOP_FILE)).unwrap();
    let last = segment_files(&dir).pop().unwrap();
    let good_len = std::fs::metadata(&last).unwrap().len();
    // Half a record: a header that promises more bytes than follow.
    tear(&last);

    let (recovery, records) = recover_all(&dir).unwrap();
    assert_eq!(records.len(), 10);
    assert!(recovery.torn_tail.is_some());
    assert_eq!(std::fs::metadata(&last).unwrap().len(), good_len);
    write_events(&dir, 1, 64 << 20).await;
    let (recovery, _) = recover_all(&dir).unwrap();
    assert_eq!(recovery.next_seq, 12);
}

#[tokio::test]
async fn interior_damage_refuses_with_its_location() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    write_events(&dir, 10, 64 << 20).await;
    let seg = segment_files(&dir).pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    // Records 1 to 9 have the same size; flip a byte in the body of the third.
    let body_len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
    let third = 2 * (record::HEADER_LEN + body_len);
    bytes[third + record::HEADER_LEN + 2] ^= 0x20;
    std::fs::write(&seg, &bytes).unwrap();
    match recover_all(&dir) {
        Err(LogError::Corrupt { path, offset, .. }) => {
            assert_eq!(path, seg);
            assert_eq!(offset, third as u64);
        }
        other => panic!("damage not reported: {:?}", other.map(|(r, _)| r.next_seq)),
    }
    // Nothing was cut: the file is as damaged as it was, for an operator to look at.
    assert_eq!(std::fs::read(&seg).unwrap().len(), bytes.len());
}

#[tokio::test]
async fn damage_in_an_older_segment_is_never_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    write_events(&dir, 200, 2 << 10).await;
    let first = segment_files(&dir).remove(0);
    let len = std::fs::metadata(&first).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&first)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    assert!(matches!(recover_all(&dir), Err(LogError::Corrupt { .. })));
}

#[tokio::test]
async fn a_repeated_msg_id_is_stored_once_even_across_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let with_id = |id: &str| {
        Event::new(
            "t".into(),
            "1".into(),
            wharf_protocol::now_ms(),
            Some(id.into()),
        )
    };
    let options = || LogOptions {
        segment_bytes: 1 << 20,
        dedup_window_ms: 60_000,
        dedup_max_entries: 1000,
        relaxed_sync: None,
        retention: Retention::default(),
        queue_depth: 8,
    };
    let (recovery, _) = recover_all(&dir).unwrap();
    let log = AppendLog::start(&dir, recovery, options(), Box::new(Collect::default())).unwrap();
    let first = log
        .append(vec![Record::Events(vec![with_id("a")])])
        .await
        .unwrap();
    assert_eq!(first, vec![Receipt::Seqs(vec![(1, false)])]);
    // A batch repeating "a" and repeating "b" inside itself.
    let batch = vec![with_id("a"), with_id("b"), with_id("b"), with_id("c")];
    let got = log.append(vec![Record::Events(batch)]).await.unwrap();
    assert_eq!(
        got,
        vec![Receipt::Seqs(vec![
            (1, true),
            (2, false),
            (2, true),
            (3, false)
        ])]
    );
    log.close().await;

    let (recovery, records) = recover_all(&dir).unwrap();
    assert_eq!(records.len(), 2);
    let log = AppendLog::start(&dir, recovery, options(), Box::new(Collect::default())).unwrap();
    let again = log
        .append(vec![Record::Events(vec![with_id("c")])])
        .await
        .unwrap();
    assert_eq!(again, vec![Receipt::Seqs(vec![(3, true)])]);
    log.close().await;
}

/// Half a record appended to the last segment.
fn tear(path: &Path) {
    let mut frame = Vec::new();
    record::frame_into(
        &Record::Events(vec![Event {
            frame_body: Default::default(),
            seq: 99,
            time_ms: 1,
            topic: "t".into(),
            payload: "1".into(),
            msg_id: None,
        }]),
        &mut frame,
    )
    .unwrap();
    OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap()
        .write_all(&frame[..frame.len() - 3])
        .unwrap();
}

#[tokio::test]
async fn damage_at_the_end_after_a_clean_stop_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    write_events(&dir, 10, 64 << 20).await;
    let last = segment_files(&dir).pop().unwrap();
    tear(&last);
    let err = recover_all(&dir)
        .err()
        .expect("damage after a clean stop is refused");
    assert!(err.to_string().contains("clean stop"), "{err}");

    // Cut short below what the clean stop recorded: refused too.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    write_events(&dir, 10, 64 << 20).await;
    let last = segment_files(&dir).pop().unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    assert!(recover_all(&dir).is_err());
}

#[test]
fn a_record_over_the_read_limit_is_refused_when_framed() {
    let big = Record::Events(vec![Event {
        frame_body: Default::default(),
        seq: 1,
        time_ms: 1,
        topic: "t".into(),
        payload: "x".repeat(record::MAX_BODY_LEN + 1),
        msg_id: None,
    }]);
    let mut out = vec![7u8; 3];
    let err = record::frame_into(&big, &mut out).unwrap_err();
    assert!(matches!(err, record::FrameError::TooLarge(_)), "{err}");
    assert_eq!(out, vec![7u8; 3], "nothing half-framed is left behind");
}

#[tokio::test]
async fn every_rolled_segment_starts_with_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    // One commit at a time: pipelined appends may share one commit (and one segment).
    for _ in 0..3 {
        write_events(&dir, 40, 1 << 10).await;
    }
    let files = segment_files(&dir);
    assert!(files.len() > 2, "{files:?}");
    for path in &files[1..] {
        assert_eq!(
            segment::first_record(path).unwrap(),
            segment::FirstRecord::Checkpoint,
            "{}",
            path.display()
        );
    }
}

#[tokio::test]
async fn a_segment_left_without_its_checkpoint_is_given_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    write_events(&dir, 50, 64 << 20).await;
    // What a crash between creating a segment and writing its checkpoint left behind.
    let empty = dir.join(segment::file_name(51));
    std::fs::File::create(&empty).unwrap();
    std::fs::remove_file(dir.join(CLEAN_STOP_FILE)).unwrap();
    let (recovery, _) = recover_all(&dir).unwrap();
    assert_eq!(recovery.segments.len(), 2);
    assert_eq!(
        segment::first_record(&empty).unwrap(),
        segment::FirstRecord::Checkpoint
    );
    assert!(recovery.unanchored.is_none());
}

#[tokio::test]
async fn recovery_keeps_only_the_msg_ids_inside_the_dedup_window() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let at = |time_ms: u64, id: &str| Event::new("t".into(), "1".into(), time_ms, Some(id.into()));
    let (recovery, _) = recover_all(&dir).unwrap();
    let options = LogOptions {
        segment_bytes: 1 << 20,
        dedup_window_ms: 60_000,
        dedup_max_entries: 1000,
        relaxed_sync: None,
        retention: Retention::default(),
        queue_depth: 8,
    };
    let log = AppendLog::start(&dir, recovery, options, Box::new(Collect::default())).unwrap();
    let events = vec![at(1_000, "old"), at(5_000, "edge"), at(9_000, "new")];
    log.append(vec![Record::Events(events)]).await.unwrap();
    log.close().await;

    let recovery = recover(&dir, 5_000, |_, _| Ok(()), |_| None).unwrap();
    let kept: Vec<&str> = recovery
        .msg_ids
        .iter()
        .map(|(_, id, _)| id.as_str())
        .collect();
    assert_eq!(kept, ["edge", "new"]);
}

#[tokio::test]
async fn a_full_dedup_table_refuses_new_msg_ids_instead_of_forgetting() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let with_id = |id: &str| {
        Event::new(
            "t".into(),
            "1".into(),
            wharf_protocol::now_ms(),
            Some(id.into()),
        )
    };
    let (recovery, _) = recover_all(&dir).unwrap();
    let options = LogOptions {
        segment_bytes: 1 << 20,
        dedup_window_ms: 60_000,
        dedup_max_entries: 2,
        relaxed_sync: None,
        retention: Retention::default(),
        queue_depth: 8,
    };
    let log = AppendLog::start(&dir, recovery, options, Box::new(Collect::default())).unwrap();
    let batch = vec![with_id("a"), with_id("b")];
    log.append(vec![Record::Events(batch)]).await.unwrap();
    let refused = log
        .append(vec![Record::Events(vec![with_id("a"), with_id("c")])])
        .await
        .unwrap();
    assert!(matches!(&refused[..], [Receipt::Refused(why)] if why.contains("dedup_max_entries")));
    let again = log
        .append(vec![Record::Events(vec![with_id("b")])])
        .await
        .unwrap();
    assert_eq!(again, vec![Receipt::Seqs(vec![(2, true)])]);
    log.close().await;
}

#[tokio::test]
async fn the_writer_resolves_a_head_start_and_refuses_legacy_records() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    write_events(&dir, 3, 1 << 20).await;
    let (recovery, _) = recover_all(&dir).unwrap();
    let options = LogOptions {
        segment_bytes: 1 << 20,
        dedup_window_ms: 60_000,
        dedup_max_entries: 10,
        relaxed_sync: None,
        retention: Retention::default(),
        queue_depth: 8,
    };
    let log = AppendLog::start(&dir, recovery, options, Box::new(Collect::default())).unwrap();
    let created = |start| Record::consumer_created("c".into(), vec!["t.>".into()], start);
    let got = log
        .append(vec![
            created(Floor::Head),
            created(Floor::At(1)),
            created(Floor::At(99)),
        ])
        .await
        .unwrap();
    assert_eq!(
        got,
        [Receipt::Floor(3), Receipt::Floor(1), Receipt::Floor(3)]
    );
    let legacy = Record::AckedV1 {
        consumer: "c".into(),
        seqs: vec![1],
        floor: 1,
        kind: Settle::Ack,
    };
    assert!(matches!(
        log.append(vec![legacy]).await,
        Err(LogError::Legacy)
    ));
    log.close().await;

    let (_, records) = recover_all(&dir).unwrap();
    let floors: Vec<u64> = records
        .iter()
        .filter_map(|r| match r {
            Record::ConsumerCreated { floor, .. } => Some(*floor),
            _ => None,
        })
        .collect();
    assert_eq!(floors, [3, 1, 3], "stored as written, never the stand-in");
}

#[tokio::test]
async fn a_poisoned_segment_table_is_taken_over() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    write_events(&dir, 5, 1 << 20).await;
    let (recovery, _) = recover_all(&dir).unwrap();
    let table: SegmentTable = Arc::new(std::sync::RwLock::new(recovery.segments));
    let held = table.clone();
    let panicked = std::thread::spawn(move || {
        let _guard = held.write().unwrap();
        panic!("a holder of the table panics");
    })
    .join();
    assert!(panicked.is_err() && table.is_poisoned());
    let mut cursor = EventCursor::new(table, 1);
    let mut out = Vec::new();
    cursor.read(5, 10, &mut out).unwrap();
    assert_eq!(out.len(), 5);
}

#[test]
fn errors_keep_their_cause_and_name_it_once() {
    use std::error::Error as _;
    let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
    let failed = LogError::write_failed(Path::new("/data/log/1.seg"), full);
    let e = LogError::Stopped(Stop::NoNewSegment(Box::new(failed)));
    let mut chain = vec![e.to_string()];
    let mut cause = e.source();
    while let Some(c) = cause {
        chain.push(c.to_string());
        cause = c.source();
    }
    // Stopped, Stop, WriteFailed, the io::Error.
    assert_eq!(chain.len(), 4, "{chain:?}");
    // Each message ends with its cause's, which is how the CLI prints every cause once.
    assert!(chain.windows(2).all(|w| w[0].ends_with(&w[1])), "{chain:?}");
}
