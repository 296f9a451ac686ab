//! The log's recovery cases and failure handling, on real files in a temporary directory.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::record::{Command, Entry};
use super::snapshot::{Snapshot, SnapshotLock};
use super::storage::{FaultPoint, FaultyStorage, FileStorage, Storage, DISK_FULL, IO_ERROR};
use super::{Replay, Wal, WalError, WalOptions, SEGMENT_BYTES_MIN};
use crate::raft::{EntryKind, Membership};

/// Collects what recovery replays.
#[derive(Debug, Default)]
struct Replayed {
    snapshot: Option<Snapshot>,
    entries: Vec<Entry>,
}

impl Replay for Replayed {
    fn restore(&mut self, snapshot: &Snapshot) {
        self.snapshot = Some(snapshot.clone());
    }
    fn apply(&mut self, entry: Entry) {
        self.entries.push(entry);
    }
}

fn options() -> WalOptions {
    WalOptions {
        segment_bytes: SEGMENT_BYTES_MIN,
        sync: true,
        snapshot_log_bytes: u64::MAX,
    }
}

fn grant(number: u64) -> Command {
    Command::Grant {
        key: Bytes::from(format!("key-{number}")),
        owner: Bytes::from_static(b"owner"),
        token: number + 1,
        ttl_ms: 1000,
    }
}

fn open_with(dir: &Path, storage: Arc<dyn Storage>) -> Result<(Wal, Replayed), WalError> {
    let mut replayed = Replayed::default();
    let wal = Wal::open(dir, storage, options(), &mut replayed)?;
    Ok((wal, replayed))
}

fn open(dir: &Path) -> (Wal, Replayed) {
    open_with(dir, Arc::new(FileStorage)).expect("open")
}

/// Appends `count` grants, committing every `batch`.
fn write(wal: &mut Wal, count: u64, batch: u64) {
    for number in 0..count {
        wal.append_command(1, grant(number));
        if (number + 1) % batch == 0 {
            wal.commit().unwrap();
        }
    }
    wal.commit().unwrap();
}

fn indexes(replayed: &Replayed) -> Vec<u64> {
    replayed.entries.iter().map(|entry| entry.index).collect()
}

fn segment_paths(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("wal-")
        })
        .collect();
    paths.sort();
    paths
}

#[test]
fn an_empty_directory_is_an_empty_log() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, replayed) = open(&dir.path().join("shard-0"));
    assert_eq!(wal.next_index(), 1);
    assert!(replayed.entries.is_empty() && replayed.snapshot.is_none());
    assert_eq!(
        wal.segment_count(),
        0,
        "no file until the first persistent write"
    );
}

#[test]
fn reopen_replays_every_entry_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path());
    write(&mut wal, 20_000, 7);
    assert!(wal.segment_count() > 3, "{} segments", wal.segment_count());
    drop(wal);
    let (mut wal, replayed) = open(dir.path());
    assert_eq!(indexes(&replayed), (1..=20_000).collect::<Vec<_>>());
    assert_eq!(replayed.entries[41].kind, EntryKind::Command(grant(41)));
    // And it continues where it stopped.
    assert_eq!(wal.append_command(1, grant(0)), 20_001);
    wal.commit().unwrap();
    drop(wal);
    assert_eq!(open(dir.path()).1.entries.len(), 20_001);
}

#[test]
fn a_torn_tail_is_cut_at_every_point() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path());
    write(&mut wal, 10, 10);
    drop(wal);
    let segment = segment_paths(dir.path()).pop().unwrap();
    let intact = std::fs::read(&segment).unwrap();
    // The last record: find where the 10th entry starts by replaying 9.
    let mut offset = 0;
    for _ in 0..9 {
        offset += super::record::Record::decode(&intact[offset..]).unwrap().1;
    }
    let end = offset + super::record::Record::decode(&intact[offset..]).unwrap().1;
    for cut in offset..end {
        // The crash left only part of the last record (the rest never reached the disk).
        let mut torn = intact.clone();
        torn[cut..end].fill(0);
        std::fs::write(&segment, &torn).unwrap();
        let (mut wal, replayed) = open(dir.path());
        assert_eq!(
            indexes(&replayed),
            (1..=9).collect::<Vec<_>>(),
            "cut at {cut}"
        );
        // The next entry reuses index 10 and survives another reopen.
        assert_eq!(wal.append_command(1, grant(99)), 10);
        wal.commit().unwrap();
        drop(wal);
        let (_, replayed) = open(dir.path());
        assert_eq!(
            replayed.entries.last().unwrap().kind,
            EntryKind::Command(grant(99)),
            "cut at {cut}"
        );
    }
}

#[test]
fn a_flipped_bit_in_the_last_segment_ends_the_log_there_and_stale_bytes_are_zeroed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path());
    write(&mut wal, 10, 3);
    drop(wal);
    let segment = segment_paths(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let fifth = {
        let mut offset = 0;
        for _ in 0..4 {
            offset += super::record::Record::decode(&bytes[offset..]).unwrap().1;
        }
        offset
    };
    bytes[fifth + 12] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();
    let (mut wal, replayed) = open(dir.path());
    assert_eq!(indexes(&replayed), vec![1, 2, 3, 4]);
    let after = std::fs::read(&segment).unwrap();
    assert!(
        after[fifth..].iter().all(|&byte| byte == 0),
        "stale records after the cut are zeroed"
    );
    // A short new record must not be followed by readable stale ones.
    wal.append_command(1, grant(7));
    wal.commit().unwrap();
    drop(wal);
    assert_eq!(indexes(&open(dir.path()).1), vec![1, 2, 3, 4, 5]);
}

#[test]
fn damage_before_the_last_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path());
    write(&mut wal, 20_000, 50);
    drop(wal);
    let first = segment_paths(dir.path()).remove(0);
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[100] ^= 0xFF;
    std::fs::write(&first, &bytes).unwrap();
    let error = open_with(dir.path(), Arc::new(FileStorage)).unwrap_err();
    assert!(matches!(error, WalError::Corruption { .. }), "{error}");
    assert!(error.to_string().contains("will not start"), "{error}");
}

#[test]
fn a_missing_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path());
    write(&mut wal, 20_000, 50);
    drop(wal);
    let segments = segment_paths(dir.path());
    assert!(segments.len() >= 3);
    std::fs::remove_file(&segments[1]).unwrap();
    let error = open_with(dir.path(), Arc::new(FileStorage)).unwrap_err();
    assert!(error.to_string().contains("missing"), "{error}");
    std::fs::remove_file(&segments[0]).unwrap();
    let error = open_with(dir.path(), Arc::new(FileStorage)).unwrap_err();
    assert!(
        error.to_string().contains("missing"),
        "without the first segment: {error}"
    );
}

#[test]
fn compaction_keeps_the_state_and_deletes_what_the_snapshot_covers() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path());
    write(&mut wal, 20_000, 100);
    let segments_before = wal.segment_count();
    let snapshot = Snapshot {
        last_index: wal.durable_index(),
        last_term: 1,
        membership: Membership::new([1]),
        locks: vec![SnapshotLock {
            key: Bytes::from_static(b"held"),
            owner: Bytes::from_static(b"o"),
            token: 5,
            ttl_ms: 100,
        }],
    };
    wal.compact(&snapshot).unwrap();
    assert_eq!(
        wal.segment_count(),
        1,
        "only the tail remains (of {segments_before})"
    );
    write(&mut wal, 3, 3);
    drop(wal);
    let (wal, replayed) = open(dir.path());
    assert_eq!(replayed.snapshot, Some(snapshot));
    assert_eq!(indexes(&replayed), vec![20_001, 20_002, 20_003]);
    assert_eq!(wal.next_index(), 20_004);
}

#[test]
fn a_damaged_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path());
    write(&mut wal, 10, 10);
    let snapshot = Snapshot {
        last_index: 10,
        last_term: 1,
        membership: Membership::new([1]),
        locks: Vec::new(),
    };
    wal.compact(&snapshot).unwrap();
    drop(wal);
    let path = dir.path().join(Snapshot::file_name(10));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[9] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let error = open_with(dir.path(), Arc::new(FileStorage)).unwrap_err();
    assert!(matches!(error, WalError::Corruption { .. }), "{error}");
}

#[test]
fn temporary_files_are_removed_and_a_spare_is_prepared() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("snapshot-00000000000000000009.snap.tmp"),
        b"half",
    )
    .unwrap();
    std::fs::write(dir.path().join("spare.log.tmp"), b"half").unwrap();
    drop(open(dir.path())); // dropping the log waits for its background spare
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, vec!["spare.log".to_string()]);
    let spare = std::fs::read(dir.path().join("spare.log")).unwrap();
    assert_eq!(spare.len() as u64, SEGMENT_BYTES_MIN);
    assert!(spare.iter().all(|&byte| byte == 0));
}

#[test]
fn a_failed_write_or_sync_is_reported_and_retried_from_the_same_offset() {
    for (point, error) in [
        (FaultPoint::Write, IO_ERROR),
        (FaultPoint::Sync, IO_ERROR),
        (FaultPoint::Create, DISK_FULL),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let storage = FaultyStorage::default();
        let (mut wal, _) = open_with(dir.path(), Arc::new(storage.clone())).unwrap();
        write(&mut wal, 5, 5);
        // The next commit fails at `point`. For segment creation, fail it before the
        // background spare is made, then fill the segment until an append rolls over.
        storage.fail(point, 0, error);
        if point == FaultPoint::Create {
            while wal.segment_count() < 2 {
                wal.append_command(1, grant(0));
                if wal.segment_count() < 2 {
                    wal.commit().unwrap();
                }
            }
        } else {
            wal.append_command(1, grant(5));
        }
        let failed = wal.commit().unwrap_err();
        assert_eq!(failed.is_disk_full(), error == DISK_FULL, "{failed}");
        assert!(wal.has_pending());
        let durable = wal.durable_index();
        // Still failing: still not durable, nothing lost from the buffer.
        assert!(wal.commit().is_err());
        assert_eq!(wal.durable_index(), durable);
        storage.heal();
        wal.commit().unwrap();
        assert_eq!(wal.durable_index(), wal.next_index() - 1);
        let expected = wal.next_index() - 1;
        drop(wal);
        let (_, replayed) = open(dir.path());
        assert_eq!(
            indexes(&replayed),
            (1..=expected).collect::<Vec<_>>(),
            "{point:?}"
        );
    }
}

#[test]
fn a_crash_after_a_failed_write_keeps_only_what_was_synced() {
    let dir = tempfile::tempdir().unwrap();
    let storage = FaultyStorage::default();
    let (mut wal, _) = open_with(dir.path(), Arc::new(storage.clone())).unwrap();
    write(&mut wal, 5, 5);
    wal.append_command(1, grant(5));
    wal.append_command(1, grant(6));
    storage.fail(FaultPoint::Write, 0, IO_ERROR); // writes half the batch, then fails
    assert!(wal.commit().is_err());
    drop(wal); // the process dies here
    let (_, replayed) = open(dir.path());
    // The half-written batch was never acknowledged: its whole first record may be read
    // back (it reached the page cache), its torn second record never.
    let recovered = indexes(&replayed);
    assert!(
        recovered == [1, 2, 3, 4, 5] || recovered == [1, 2, 3, 4, 5, 6],
        "{recovered:?}"
    );
}

#[test]
fn records_after_a_zero_gap_are_never_replayed() {
    // A power cut kept a later page of a batch but not the page before it: the log has a
    // hole of zeros, then stale records with the right indexes after it.
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path());
    write(&mut wal, 10, 10);
    drop(wal);
    let segment = segment_paths(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let mut offsets = vec![0];
    for _ in 0..10 {
        let last = *offsets.last().unwrap();
        offsets.push(last + super::record::Record::decode(&bytes[last..]).unwrap().1);
    }
    bytes[offsets[4]..offsets[5]].fill(0); // entry 5 never reached the disk; 6..10 did
    std::fs::write(&segment, &bytes).unwrap();

    let (mut wal, replayed) = open(dir.path());
    assert_eq!(indexes(&replayed), vec![1, 2, 3, 4]);
    let after = std::fs::read(&segment).unwrap();
    assert!(
        after[offsets[4]..].iter().all(|&byte| byte == 0),
        "the stale records were zeroed"
    );
    // New entries 5.. land where the stale ones were; a restart must see only the new ones.
    for number in 100..103 {
        wal.append_command(2, grant(number));
    }
    wal.commit().unwrap();
    drop(wal);
    let (_, replayed) = open(dir.path());
    assert_eq!(indexes(&replayed), vec![1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(replayed.entries[4].kind, EntryKind::Command(grant(100)));
    assert!(replayed.entries[4..].iter().all(|entry| entry.term == 2));
}

#[test]
fn one_commit_may_span_several_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path());
    // Far more than a segment holds, in a single commit.
    let count = 3 * SEGMENT_BYTES_MIN / 60;
    for number in 0..count {
        wal.append_command(1, grant(number));
    }
    wal.commit().unwrap();
    assert!(wal.segment_count() >= 3, "{} segments", wal.segment_count());
    drop(wal);
    let (_, replayed) = open(dir.path());
    assert_eq!(indexes(&replayed), (1..=count).collect::<Vec<_>>());
}

mod power_cuts {
    use super::*;
    use crate::wal::power_cut::PowerCutStorage;
    use proptest::prelude::*;

    /// Recovery must return every acknowledged entry, then at most a prefix of the batch
    /// interrupted by the power cut, and nothing else.
    fn check(
        dir: &Path,
        storage: &PowerCutStorage,
        acknowledged: usize,
        possible: &[Command],
    ) -> Result<Vec<Command>, TestCaseError> {
        let (_, replayed) = open_with(dir, Arc::new(storage.clone())).unwrap();
        let got: Vec<Command> = replayed
            .entries
            .iter()
            .filter_map(|entry| match &entry.kind {
                EntryKind::Command(command) => Some(command.clone()),
                _ => None,
            })
            .collect();
        prop_assert!(
            got.len() >= acknowledged,
            "{} entries recovered, {} acknowledged",
            got.len(),
            acknowledged
        );
        prop_assert!(
            got.len() <= possible.len(),
            "more entries than were ever written"
        );
        prop_assert_eq!(
            &got[..],
            &possible[..got.len()],
            "a stale or reordered entry"
        );
        Ok(got)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Batches are committed, then one more is written and the power fails during its
        /// sync, keeping any subset of the unsynced pages (later pages without earlier
        /// ones included). Then the same again on the recovered log, so that new entries
        /// land over what the first cut left.
        #[test]
        fn every_acknowledged_entry_survives_a_power_cut(
            rounds in proptest::collection::vec((proptest::collection::vec(1u64..500, 0..8), 1u64..500), 1..4),
            seed in any::<u64>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let storage = PowerCutStorage::default();
            let mut next = 0u64;
            let mut on_disk: Vec<Command> = Vec::new();
            for (round, (batches, interrupted)) in rounds.into_iter().enumerate() {
                let (mut wal, _) = open_with(dir.path(), Arc::new(storage.clone())).unwrap();
                let mut possible = on_disk.clone();
                for size in batches {
                    for _ in 0..size {
                        possible.push(grant(next));
                        wal.append_command(1, grant(next));
                        next += 1;
                    }
                    wal.commit().unwrap();
                }
                let acknowledged = possible.len();
                for _ in 0..interrupted {
                    possible.push(grant(next));
                    wal.append_command(1, grant(next));
                    next += 1;
                }
                storage.fail_syncs();
                prop_assert!(wal.commit().is_err());
                drop(wal);
                let mut state = seed ^ (round as u64) << 32 | 1;
                storage.cut(|_, _| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state & 1 == 1
                });
                on_disk = check(dir.path(), &storage, acknowledged, &possible)?;
            }
        }
    }
}

/// Entries of term 2 that replace what the log held from `first` on.
fn replacing(wal: &mut Wal, first: u64, count: u64) {
    wal.truncate_from(first).unwrap();
    for number in 0..count {
        let entry = Entry {
            index: first + number,
            term: 2,
            kind: EntryKind::Command(grant(1000 + number)),
        };
        wal.append(&entry);
    }
    wal.commit().unwrap();
}

#[test]
fn a_replaced_suffix_is_gone_after_a_reopen_within_one_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path());
    write(&mut wal, 10, 10);
    // Phase 1: a new leader replaces entries 6..=10 with three of its own.
    replacing(&mut wal, 6, 3);
    assert_eq!(wal.next_index(), 9);
    drop(wal);
    // Phase 2: the log holds 1..=5 of term 1 and 6..=8 of term 2, nothing of the old tail.
    let (wal, replayed) = open(dir.path());
    assert_eq!(indexes(&replayed), (1..=8).collect::<Vec<_>>());
    let terms: Vec<u64> = replayed.entries.iter().map(|entry| entry.term).collect();
    assert_eq!(terms, [1, 1, 1, 1, 1, 2, 2, 2]);
    assert_eq!(
        replayed.entries[5].kind,
        EntryKind::Command(grant(1000)),
        "the replacement, not the old entry"
    );
    assert_eq!(wal.next_index(), 9);
}

#[test]
fn a_replaced_suffix_spanning_segments_deletes_the_later_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path());
    write(&mut wal, 20_000, 100);
    let segments_before = wal.segment_count();
    assert!(segments_before > 2, "{segments_before} segments");
    // Replace from an entry in the first segment: every later segment goes.
    replacing(&mut wal, 50, 2);
    assert_eq!(wal.segment_count(), 1);
    assert_eq!(segment_paths(dir.path()).len(), 1);
    drop(wal);
    let (mut wal, replayed) = open(dir.path());
    assert_eq!(indexes(&replayed), (1..=51).collect::<Vec<_>>());
    // The log goes on from there, and again survives a reopen.
    wal.append_command(2, grant(7));
    wal.commit().unwrap();
    drop(wal);
    let (_, replayed) = open(dir.path());
    assert_eq!(indexes(&replayed), (1..=52).collect::<Vec<_>>());
}

#[test]
fn an_installed_snapshot_replaces_the_whole_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path());
    write(&mut wal, 100, 10);
    let snapshot = Snapshot {
        last_index: 500,
        last_term: 4,
        membership: Membership::new([1, 2, 3]),
        locks: vec![SnapshotLock {
            key: Bytes::from_static(b"from-the-leader"),
            owner: Bytes::from_static(b"o"),
            token: 4 << 40,
            ttl_ms: 5_000,
        }],
    };
    wal.install_snapshot(&snapshot).unwrap();
    assert_eq!(wal.next_index(), 501);
    assert!(segment_paths(dir.path()).is_empty());
    wal.append_command(4, grant(1));
    wal.commit().unwrap();
    drop(wal);
    let (wal, replayed) = open(dir.path());
    assert_eq!(replayed.snapshot, Some(snapshot));
    assert_eq!(indexes(&replayed), vec![501]);
    assert_eq!(wal.snapshot_index(), 500);
    assert_eq!(wal.load_snapshot().unwrap().unwrap().last_index, 500);
}

#[test]
fn a_truncation_whose_sync_failed_is_retried() {
    // From an entry in the middle of the segment, and from its first entry.
    for first_replaced in [4, 1] {
        let dir = tempfile::tempdir().unwrap();
        let storage = FaultyStorage::default();
        let (mut wal, _) = open_with(dir.path(), Arc::new(storage.clone())).unwrap();
        write(&mut wal, 6, 6);
        // Phase 1: the zeroing is written but its sync fails; so does a retry, which writes
        // the zeros again (the page cache already shows them, the disk may not).
        storage.fail(FaultPoint::Sync, 0, IO_ERROR);
        assert!(wal.truncate_from(first_replaced).is_err());
        assert!(wal.truncate_from(first_replaced).is_err());
        // Phase 2: the disk recovers; the retry finds the records ending where it cut.
        storage.heal();
        replacing(&mut wal, first_replaced, 2);
        drop(wal);
        let (_, replayed) = open(dir.path());
        let expected: Vec<u64> = (1..first_replaced + 2).collect();
        assert_eq!(indexes(&replayed), expected, "from {first_replaced}");
        assert_eq!(replayed.entries.last().unwrap().term, 2);
    }
}
