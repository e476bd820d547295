//! Hostile bytes on disk: a segment full of garbage, or a valid log with random damage, never
//! panics and never allocates beyond the decode limit; damage is reported or cut as a torn
//! tail, never silently skipped in the middle.

use std::fs;

use proptest::prelude::*;
use wharf_broker::inspect::{self as log, LogError};

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn a_garbage_segment_is_refused_or_cut_never_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(log::segment::file_name(1)), &bytes).unwrap();
        let mut records = 0;
        match log::recover(&dir, 0, |_, _| { records += 1; Ok(()) }, |_| None) {
            Ok(recovery) => {
                // Whatever was accepted is a valid prefix; the rest was cut as a torn tail.
                let left = fs::metadata(dir.join(log::segment::file_name(1))).unwrap().len();
                prop_assert_eq!(recovery.end.offset, left);
            }
            Err(LogError::Corrupt { offset, reason, .. }) => {
                prop_assert!(!reason.is_empty());
                prop_assert!(offset <= bytes.len() as u64);
            }
            Err(other) => prop_assert!(false, "unexpected error {other}"),
        }
    }
}
