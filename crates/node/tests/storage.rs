//! Storage conformance (openraft's own suite) and crash-recovery tests of the embedded log.

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{log_id, StoreBuilder, Suite};
use openraft::{Entry, EntryPayload, RaftLogReader};
use sinkron_core::{Batch, Command, Request};
use sinkron_node::payload::Payload;
use sinkron_node::storage::mem::MemLog;
use sinkron_node::storage::segment::decode_records;
use sinkron_node::storage::writer::WriteOp;
use sinkron_node::storage::{Durability, LogStore, SharedLog, StateMachineStore, StorageHealth};
use sinkron_node::types::{StorageError, TypeConfig};
use tempfile::TempDir;

/// Group 0's view of a shared log kept in `dir/log/`.
fn open_log(dir: &std::path::Path) -> Result<LogStore, StorageError> {
    let wal = SharedLog::open(&dir.join("log"))
        .map_err(|e| openraft::StorageIOError::read_logs(openraft::AnyError::new(&e)))?;
    Ok(wal.group(0))
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("create temp dir");
        let log = open_log(dir.path())?;
        let sm = StateMachineStore::open(dir.path())?;
        Ok((dir, log, sm))
    }
}

#[test]
fn embedded_store_passes_openraft_suite() -> Result<(), StorageError> {
    Suite::test_all(Builder)
}

fn put_entry(term: u64, index: u64) -> Entry<TypeConfig> {
    let request = Request {
        request_id: None,
        command: Command::KvPut {
            key: format!("k{index}"),
            value: index.into(),
            if_version: None,
            fence: None,
        },
    };
    let batch = Batch { at_ms: index, requests: vec![request], seed: None };
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Normal(Payload::new(batch).expect("encodes")),
    }
}

async fn append_durably(log: &mut LogStore, entries: Vec<Entry<TypeConfig>>) {
    use openraft::storage::RaftLogStorageExt;
    log.blocking_append(entries).await.expect("append");
}

async fn indexes(log: &mut LogStore) -> Vec<u64> {
    log.try_get_log_entries(0..).await.expect("read").iter().map(|e| e.log_id.index).collect()
}

#[tokio::test]
async fn reopened_log_has_every_flushed_entry() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let mut log = open_log(dir.path()).expect("open");
        append_durably(&mut log, (1..=100).map(|i| put_entry(1, i)).collect()).await;
        log.save_vote(&openraft::Vote::new(3, 7)).await.expect("vote");
    }
    let mut log = open_log(dir.path()).expect("reopen");
    assert_eq!(indexes(&mut log).await, (1..=100).collect::<Vec<_>>());
    assert_eq!(log.read_vote().await.expect("vote"), Some(openraft::Vote::new(3, 7)));
}

/// A log of entries 1 to 10, its one segment's directory entry and bytes.
async fn ten_entries_in_one_segment() -> (TempDir, std::fs::DirEntry, Vec<u8>) {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let mut log = open_log(dir.path()).expect("open");
        append_durably(&mut log, (1..=10).map(|i| put_entry(1, i)).collect()).await;
    }
    let segment = only_segment(dir.path());
    let bytes = std::fs::read(segment.path()).expect("read segment");
    (dir, segment, bytes)
}

/// The one segment of the log in `dir`.
fn only_segment(dir: &std::path::Path) -> std::fs::DirEntry {
    let mut segments: Vec<std::fs::DirEntry> = std::fs::read_dir(dir.join("log"))
        .expect("ls")
        .map(|e| e.expect("entry"))
        .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
        .collect();
    assert_eq!(segments.len(), 1, "one segment");
    segments.remove(0)
}

#[tokio::test]
async fn torn_tail_is_cut_and_appends_continue() {
    let (dir, segment, bytes) = ten_entries_in_one_segment().await;
    // Simulate a crash in the middle of writing entry 10: keep only its first bytes, then
    // leave garbage where the rest would have been.
    let decoded = decode_records(&bytes);
    // The segment opens with its format record, then the ten entries.
    assert_eq!(decoded.records.len(), 11);
    let tenth = decoded.records[10].offset;
    let f = std::fs::OpenOptions::new().write(true).open(segment.path()).expect("open segment");
    f.set_len(tenth + 5).expect("chop");
    f.set_len(tenth + 4096).expect("re-extend");
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xAB; 64], tenth + 100).expect("garbage");
    drop(f);

    let mut log = open_log(dir.path()).expect("reopen");
    assert_eq!(indexes(&mut log).await, (1..=9).collect::<Vec<_>>());
    append_durably(&mut log, vec![put_entry(2, 10), put_entry(2, 11)]).await;
    drop(log);
    let mut log = open_log(dir.path()).expect("reopen again");
    assert_eq!(indexes(&mut log).await, (1..=11).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_bad_record_with_valid_records_after_it_is_corruption_not_a_torn_tail() {
    let (dir, segment, bytes) = ten_entries_in_one_segment().await;
    let decoded = decode_records(&bytes);
    let fifth = decoded.records[5].offset;
    // One flipped byte in entry 5's payload: entries 6 to 10, acknowledged, follow it.
    let f = std::fs::OpenOptions::new().write(true).open(segment.path()).expect("open segment");
    let flipped = bytes[fifth as usize + 12] ^ 0x20;
    std::os::unix::fs::FileExt::write_all_at(&f, &[flipped], fifth + 12).expect("flip");
    drop(f);

    let error = open_log(dir.path()).err().expect("a corrupt log must not open").to_string();
    let name = segment.path().display().to_string();
    assert!(error.contains(&name), "names the file: {error}");
    assert!(error.contains(&format!("offset {fifth}")), "names the offset: {error}");
    assert!(error.contains("rejoins"), "says how to recover: {error}");
    let after = std::fs::read(segment.path()).expect("read segment");
    assert_eq!(
        after,
        bytes
            .iter()
            .enumerate()
            .map(|(i, b)| if i == fifth as usize + 12 { flipped } else { *b })
            .collect::<Vec<_>>(),
        "nothing was cut"
    );
}

#[tokio::test]
async fn a_segment_of_another_format_version_is_refused_by_name() {
    let (dir, segment, bytes) = ten_entries_in_one_segment().await;
    let decoded = decode_records(&bytes);
    let first = decoded.records[0].payload;
    assert_eq!(first[0], b'F', "every segment opens with its format record");
    assert_eq!(u32::from_le_bytes(first[9..13].try_into().expect("4 bytes")), 1);
    // The same segment, declaring version 2 (with a valid checksum: not damage).
    let mut payload = first.to_vec();
    payload[9..13].copy_from_slice(&2u32.to_le_bytes());
    let mut rewritten = Vec::new();
    sinkron_node::storage::segment::encode_record(&payload, &mut rewritten);
    rewritten.extend_from_slice(&bytes[decoded.records[1].offset as usize..]);
    std::fs::write(segment.path(), &rewritten).expect("rewrite");
    let error = open_log(dir.path()).err().expect("another version must not open").to_string();
    assert!(error.contains("format version 2; this binary reads version 1"), "{error}");
    assert!(error.contains(&segment.path().display().to_string()), "names the file: {error}");
    assert!(!error.contains("corrupt"), "a version is not damage: {error}");
}

#[test]
fn a_snapshot_of_another_format_version_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut file = b"SKSNAP02".to_vec();
    file.extend_from_slice(&[0u8; 40]);
    std::fs::write(dir.path().join("snapshot.bin"), &file).expect("write");
    let error = match StateMachineStore::<sinkron_core::Group0State>::open(dir.path()) {
        Ok(_) => panic!("a snapshot of another version must not load"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("format version 02; this binary reads version 01"), "{error}");
    std::fs::write(dir.path().join("snapshot.bin"), b"garbage that is long enough to be read")
        .expect("write");
    let error = StateMachineStore::<sinkron_core::Group0State>::open(dir.path()).err().map(|e| e.to_string());
    assert!(error.is_some_and(|e| e.contains("corrupt")), "anything else is damage");
}

#[tokio::test]
async fn a_segment_without_a_format_record_is_read_as_version_1() {
    // Segments of earlier versions open with a vote, a purge or an entry.
    let (dir, segment, bytes) = ten_entries_in_one_segment().await;
    let decoded = decode_records(&bytes);
    std::fs::write(segment.path(), &bytes[decoded.records[1].offset as usize..]).expect("rewrite");
    let mut log = open_log(dir.path()).expect("a segment of before the format record opens");
    assert_eq!(indexes(&mut log).await, (1..=10).collect::<Vec<_>>());
}

#[tokio::test]
async fn zero_fill_is_not_mistaken_for_records_or_damage() {
    let dir = tempfile::tempdir().expect("temp dir");
    for round in 0..3u64 {
        let mut log = open_log(dir.path()).expect("open");
        let first = round * 10 + 1;
        append_durably(&mut log, (first..first + 10).map(|i| put_entry(1, i)).collect()).await;
        assert_eq!(indexes(&mut log).await, (1..first + 10).collect::<Vec<_>>());
    }
    let segment = only_segment(dir.path());
    assert!(
        segment.metadata().expect("stat").len() >= 1024 * 1024,
        "the newest segment is zero-filled ahead"
    );
}

#[tokio::test]
async fn truncate_and_purge_survive_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let mut log = open_log(dir.path()).expect("open");
        append_durably(&mut log, (1..=50).map(|i| put_entry(1, i)).collect()).await;
        log.truncate(log_id(1, 1, 41)).await.expect("truncate");
        append_durably(&mut log, (41..=45).map(|i| put_entry(2, i)).collect()).await;
        log.purge(log_id(1, 1, 20)).await.expect("purge");
    }
    let mut log = open_log(dir.path()).expect("reopen");
    assert_eq!(indexes(&mut log).await, (21..=45).collect::<Vec<_>>());
    let entries = log.try_get_log_entries(41..=41).await.expect("read");
    assert_eq!(entries[0].log_id.leader_id.term, 2, "the truncated entry was replaced");
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(20));
}

#[tokio::test]
async fn purge_past_the_end_then_append_after_gap() {
    // A follower that installs a snapshot beyond its log purges everything and continues
    // at the snapshot's next index.
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let mut log = open_log(dir.path()).expect("open");
        append_durably(&mut log, (1..=5).map(|i| put_entry(1, i)).collect()).await;
        log.purge(log_id(3, 2, 100)).await.expect("purge");
        append_durably(&mut log, (101..=103).map(|i| put_entry(3, i)).collect()).await;
    }
    let mut log = open_log(dir.path()).expect("reopen");
    assert_eq!(indexes(&mut log).await, vec![101, 102, 103]);
}

#[tokio::test]
async fn snapshot_restores_state_after_restart() {
    use openraft::RaftSnapshotBuilder;
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let mut sm: StateMachineStore = StateMachineStore::open(dir.path()).expect("open");
        sm.apply((1..=30).map(|i| put_entry(1, i))).await.expect("apply");
        let mut builder = sm.get_snapshot_builder().await;
        let snap = builder.build_snapshot().await.expect("build");
        assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(30));
    }
    let mut sm: StateMachineStore = StateMachineStore::open(dir.path()).expect("reopen");
    let (applied, _) = sm.applied_state().await.expect("applied");
    assert_eq!(applied.map(|l| l.index), Some(30));
    assert_eq!(sm.read().state.kv.len(), 30);
    let current = sm.get_current_snapshot().await.expect("read snapshot").expect("has snapshot");
    assert_eq!(current.meta.last_log_id.map(|l| l.index), Some(30));
}

/// Entries of `group` in the shared log, as the tests write them: term 1, index `i`.
async fn append_to(wal: &SharedLog, group: u64, range: std::ops::RangeInclusive<u64>) {
    append_durably(&mut wal.group(group), range.map(|i| put_entry(1, i)).collect()).await;
}

#[tokio::test]
async fn groups_share_one_log_and_each_recovers_its_own() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let wal = SharedLog::open(dir.path()).expect("open");
        for round in 0..5u64 {
            for group in 0..3u64 {
                append_to(&wal, group, round * 10 + 1..=round * 10 + 10).await;
            }
        }
        wal.group(0).save_vote(&openraft::Vote::new(4, 1)).await.expect("vote");
        wal.group(2).save_vote(&openraft::Vote::new(9, 2)).await.expect("vote");
        let mut one = wal.group(1);
        one.truncate(log_id(1, 1, 31)).await.expect("truncate");
        append_durably(&mut one, (31..=35).map(|i| put_entry(2, i)).collect()).await;
        wal.group(2).purge(log_id(1, 1, 25)).await.expect("purge");
    }
    let wal = SharedLog::open(dir.path()).expect("reopen");
    let (mut zero, mut one, mut two) = (wal.group(0), wal.group(1), wal.group(2));
    assert_eq!(indexes(&mut zero).await, (1..=50).collect::<Vec<_>>());
    assert_eq!(indexes(&mut one).await, (1..=35).collect::<Vec<_>>());
    assert_eq!(one.try_get_log_entries(31..=31).await.expect("read")[0].log_id.leader_id.term, 2);
    assert_eq!(indexes(&mut two).await, (26..=50).collect::<Vec<_>>());
    assert_eq!(zero.read_vote().await.expect("vote"), Some(openraft::Vote::new(4, 1)));
    assert_eq!(one.read_vote().await.expect("vote"), None);
    assert_eq!(two.read_vote().await.expect("vote"), Some(openraft::Vote::new(9, 2)));
    assert_eq!(two.get_log_state().await.expect("state").last_purged_log_id.map(|l| l.index), Some(25));
    assert!(indexes(&mut wal.group(7)).await.is_empty(), "a group that never wrote is empty");
}

fn segment_count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .expect("ls")
        .filter(|e| e.as_ref().expect("entry").path().extension().is_some_and(|x| x == "seg"))
        .count()
}

#[tokio::test]
async fn purged_segments_go_and_an_idle_group_is_copied_forward_not_lost() {
    let dir = tempfile::tempdir().expect("temp dir");
    let max_segments = sinkron_node::storage::wal::SEALED_KEPT + 2;
    {
        let wal = SharedLog::open_with(dir.path(), 8 * 1024).expect("open");
        // An idle group: three entries and a vote, never purged.
        append_to(&wal, 9, 1..=3).await;
        wal.group(9).save_vote(&openraft::Vote::new(2, 3)).await.expect("vote");
        // A busy group that purges as it goes: its old segments must be reclaimed, and the
        // idle group's entries must move along instead of pinning them all.
        let mut busy = wal.group(1);
        for chunk in 0..60u64 {
            let first = chunk * 20 + 1;
            append_durably(&mut busy, (first..first + 20).map(|i| put_entry(1, i)).collect()).await;
            if chunk >= 2 {
                busy.purge(log_id(1, 1, first - 21)).await.expect("purge");
            }
            assert!(segment_count(dir.path()) <= max_segments, "segments pile up after chunk {chunk}");
        }
    }
    let wal = SharedLog::open_with(dir.path(), 8 * 1024).expect("reopen");
    let mut idle = wal.group(9);
    assert_eq!(indexes(&mut idle).await, vec![1, 2, 3]);
    assert_eq!(idle.read_vote().await.expect("vote"), Some(openraft::Vote::new(2, 3)));
    let mut busy = wal.group(1);
    assert_eq!(indexes(&mut busy).await, (1161..=1200).collect::<Vec<_>>());
    assert_eq!(busy.get_log_state().await.expect("state").last_purged_log_id.map(|l| l.index), Some(1160));
}

#[tokio::test]
async fn logs_of_the_per_group_layout_move_into_the_shared_log() {
    use sinkron_node::storage::segment::encode_record;
    let data = tempfile::tempdir().expect("temp dir");
    let group_dir = data.path().join("groups").join("4");
    std::fs::create_dir_all(group_dir.join("log")).expect("mkdir");
    let mut old = Vec::new();
    for i in 1..=6 {
        encode_record(&serde_json::to_vec(&put_entry(1, i)).expect("json"), &mut old);
    }
    std::fs::write(group_dir.join("log").join("00000000000000000001.seg"), &old).expect("segment");
    std::fs::write(
        group_dir.join("vote.json"),
        serde_json::to_vec(&openraft::Vote::new(5, 6)).expect("json"),
    )
    .expect("vote");
    std::fs::write(group_dir.join("purged.json"), serde_json::to_vec(&log_id(1, 1, 2)).expect("json"))
        .expect("purged");

    let wal_dir = data.path().join("log");
    sinkron_node::storage::import_group_dirs(&data.path().join("groups"), &wal_dir).expect("import");
    assert!(!group_dir.join("log").exists() && !group_dir.join("vote.json").exists(), "old files gone");
    let wal = SharedLog::open(&wal_dir).expect("open");
    let mut four = wal.group(4);
    assert_eq!(indexes(&mut four).await, vec![3, 4, 5, 6]);
    assert_eq!(four.read_vote().await.expect("vote"), Some(openraft::Vote::new(5, 6)));
    // A second import finds nothing to move.
    sinkron_node::storage::import_group_dirs(&data.path().join("groups"), &wal_dir).expect("again");
}

/// A log writer that completes each change only when the test releases it: the window
/// between an append and its fsync, held open for as long as the test likes.
fn held_writer() -> (std::sync::mpsc::Sender<()>, impl FnOnce(std::sync::mpsc::Receiver<WriteOp>) + Send) {
    let (release, released) = std::sync::mpsc::channel::<()>();
    let writer = move |ops: std::sync::mpsc::Receiver<WriteOp>| {
        for op in ops {
            if matches!(op, WriteOp::CommittedHint(_)) {
                continue;
            }
            if released.recv().is_err() {
                return;
            }
            match op {
                WriteOp::Append { done, .. } => done.complete(Ok(())),
                WriteOp::Truncate { done, .. } | WriteOp::Purge { done, .. } | WriteOp::Meta { done, .. } => {
                    let _ = done.send(Ok(()));
                }
                WriteOp::CommittedHint(_) => {}
            }
        }
    };
    (release, writer)
}

/// Whether every append marked in `durability` is on disk.
fn settled(durability: &Durability) -> bool {
    use futures_util::FutureExt;
    durability.wait_through(u64::MAX).now_or_never().is_some_and(|r| r.is_ok())
}

/// Whether `task` is still waiting after the scheduler had every chance to finish it.
async fn still_waiting<T>(task: &tokio::task::JoinHandle<T>) -> bool {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    !task.is_finished()
}

#[tokio::test]
async fn a_leaders_append_is_replicable_at_once_but_seen_only_once_durable() {
    use openraft::storage::RaftLogStorageExt;
    let (release, writer) = held_writer();
    let log = LogStore::start(MemLog::default(), StorageHealth::default(), writer)
        .expect("start")
        .on_node(1)
        .await
        .expect("on node 1");
    let (mut voter, mut leader) = (log.clone(), log.clone());
    let vote = tokio::spawn(async move { voter.save_vote(&openraft::Vote::new_committed(3, 1)).await });
    release.send(()).expect("release the vote");
    vote.await.expect("join").expect("vote");

    // Node 1 leads term 3: its append is reported flushed with the writer still holding it,
    // so openraft may replicate it right away.
    let reported = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        leader.blocking_append(vec![put_entry(3, 1), put_entry(3, 2)]),
    )
    .await;
    assert!(matches!(reported, Ok(Ok(()))), "a leader's append waited for its fsync: {reported:?}");

    // Until the fsync, nothing applies it and no commit index covering it goes out.
    let dir = tempfile::tempdir().expect("temp dir");
    let sm: StateMachineStore = StateMachineStore::open(dir.path()).expect("state machine");
    sm.apply_after(log.durability().clone());
    let mut applier = sm.clone();
    let apply = tokio::spawn(async move { applier.apply(vec![put_entry(3, 1), put_entry(3, 2)]).await });
    // The wait the peer client makes before it sends a commit index covering the entries
    // (the client itself is checked in `network.rs`).
    let durability = log.durability().clone();
    let commit_wait = tokio::spawn(async move { durability.wait_through(2).await });
    assert!(still_waiting(&apply).await, "applied before the leader's fsync");
    assert!(still_waiting(&commit_wait).await, "the wait for the leader's fsync ended before it");
    assert_eq!(sm.read().last_applied, None);
    assert!(!settled(log.durability()));

    release.send(()).expect("release the append");
    apply.await.expect("join").expect("apply");
    commit_wait.await.expect("join").expect("commit wait");
    assert_eq!(sm.read().last_applied.map(|id| id.index), Some(2));
    assert!(settled(log.durability()));

    // As a follower of node 2 in term 4, an append is reported only after its fsync.
    let mut voter = log.clone();
    let vote = tokio::spawn(async move { voter.save_vote(&openraft::Vote::new_committed(4, 2)).await });
    release.send(()).expect("release the vote");
    vote.await.expect("join").expect("vote");
    let mut follower = log.clone();
    let append = tokio::spawn(async move { follower.blocking_append(vec![put_entry(4, 3)]).await });
    assert!(still_waiting(&append).await, "a follower's append was reported before its fsync");
    release.send(()).expect("release the follower's append");
    append.await.expect("join").expect("append");
}

#[tokio::test]
async fn a_restarted_leader_stores_its_vote_uncommitted_and_keeps_its_pending_appends() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let wal = SharedLog::open(dir.path()).expect("open");
        wal.group(1).save_vote(&openraft::Vote::new_committed(5, 1)).await.expect("vote");
        wal.group(2).save_vote(&openraft::Vote::new_committed(7, 2)).await.expect("vote");
    }
    let wal = SharedLog::open(dir.path()).expect("reopen");
    // Node 1 led group 1 in term 5: it may have sent entries its disk lost, so it must not
    // lead term 5 again; it keeps its vote for itself in term 5, uncommitted.
    let mut led = wal.group(1).on_node(1).await.expect("on node 1");
    assert_eq!(led.read_vote().await.expect("vote"), Some(openraft::Vote::new(5, 1)));
    // Group 2's leader was node 2: node 1's vote for it stays as it was.
    let mut followed = wal.group(2).on_node(1).await.expect("on node 1");
    assert_eq!(followed.read_vote().await.expect("vote"), Some(openraft::Vote::new_committed(7, 2)));
    drop((led, followed));
    let wal_again = {
        drop(wal);
        SharedLog::open(dir.path()).expect("reopen again")
    };
    assert_eq!(
        wal_again.group(1).read_vote().await.expect("vote"),
        Some(openraft::Vote::new(5, 1)),
        "not durable"
    );

    // A group opened again in the same process still waits for its earlier open's marks.
    let mark = wal_again.group(3).durability().mark(1);
    assert!(!settled(wal_again.group(3).durability()), "a reopened group forgot a pending append");
    mark.complete(Ok(()));
    assert!(settled(wal_again.group(3).durability()));
}

/// The shared log's writer takes the groups' commit hints from their logs (no message per
/// commit), and still writes the newest ones before it stops.
#[tokio::test]
async fn commit_hints_of_the_shared_log_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let wal_dir = dir.path().join("log");
    {
        let wal = SharedLog::open(&wal_dir).expect("open");
        let (mut one, mut two) = (wal.group(1), wal.group(2));
        append_durably(&mut one, vec![put_entry(1, 1), put_entry(1, 2), put_entry(1, 3)]).await;
        append_durably(&mut two, vec![put_entry(1, 1), put_entry(1, 2)]).await;
        one.save_committed(Some(log_id(1, 1, 1))).await.expect("hint");
        one.save_committed(Some(log_id(1, 1, 3))).await.expect("hint");
        two.save_committed(Some(log_id(1, 1, 2))).await.expect("hint");
    }
    // The old writer lets go of the directory once it has written the last hints.
    let wal = SharedLog::open(&wal_dir).expect("reopen");
    assert_eq!(wal.group(1).read_committed().await.expect("read"), Some(log_id(1, 1, 3)));
    assert_eq!(wal.group(2).read_committed().await.expect("read"), Some(log_id(1, 1, 2)));
}

/// A group's own writer (Redis) gets at most one commit hint per interval, not one per commit.
#[tokio::test]
async fn a_groups_own_writer_gets_one_commit_hint_per_interval() {
    let (counted, count) = tokio::sync::oneshot::channel();
    // Counts the hints it was sent, until the log lets go of its channel.
    let writer = move |ops: std::sync::mpsc::Receiver<WriteOp>| {
        let hints = ops.iter().filter(|op| matches!(op, WriteOp::CommittedHint(_))).count();
        let _ = counted.send(hints);
    };
    let mut log = LogStore::start(MemLog::default(), StorageHealth::default(), writer).expect("start");
    for index in 1..=5 {
        log.save_committed(Some(log_id(1, 1, index))).await.expect("hint");
    }
    assert_eq!(log.read_committed().await.expect("read"), Some(log_id(1, 1, 5)), "kept in memory");
    tokio::time::sleep(sinkron_node::storage::writer::HINT_INTERVAL + std::time::Duration::from_millis(20))
        .await;
    log.save_committed(Some(log_id(1, 1, 6))).await.expect("hint");
    drop(log);
    let hints = tokio::time::timeout(std::time::Duration::from_secs(10), count).await;
    assert_eq!(
        hints.expect("the writer stops").expect("count"),
        2,
        "one for the first five commits, one after the interval"
    );
}
