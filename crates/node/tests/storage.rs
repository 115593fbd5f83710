//! Storage conformance (openraft's own suite) and crash-recovery tests of the embedded log.

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{log_id, StoreBuilder, Suite};
use openraft::{Entry, EntryPayload, RaftLogReader};
use sinkron_core::{Batch, Command, Request};
use sinkron_node::storage::segment::decode_records;
use sinkron_node::storage::{LogStore, StateMachineStore};
use sinkron_node::types::{StorageError, TypeConfig};
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("create temp dir");
        let log = LogStore::open(dir.path())?;
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
        command: Command::KvPut { key: format!("k{index}"), value: index.into() },
    };
    let batch = Batch { at_ms: index, requests: vec![request] };
    Entry { log_id: log_id(term, 1, index), payload: EntryPayload::Normal(batch) }
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
        let mut log = LogStore::open(dir.path()).expect("open");
        append_durably(&mut log, (1..=100).map(|i| put_entry(1, i)).collect()).await;
        log.save_vote(&openraft::Vote::new(3, 7)).await.expect("vote");
    }
    let mut log = LogStore::open(dir.path()).expect("reopen");
    assert_eq!(indexes(&mut log).await, (1..=100).collect::<Vec<_>>());
    assert_eq!(log.read_vote().await.expect("vote"), Some(openraft::Vote::new(3, 7)));
}

/// A log of entries 1 to 10, its one segment's directory entry and bytes.
async fn ten_entries_in_one_segment() -> (TempDir, std::fs::DirEntry, Vec<u8>) {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let mut log = LogStore::open(dir.path()).expect("open");
        append_durably(&mut log, (1..=10).map(|i| put_entry(1, i)).collect()).await;
    }
    let segment =
        std::fs::read_dir(dir.path().join("log")).expect("ls").next().expect("one segment").expect("entry");
    let bytes = std::fs::read(segment.path()).expect("read segment");
    (dir, segment, bytes)
}

#[tokio::test]
async fn torn_tail_is_cut_and_appends_continue() {
    let (dir, segment, bytes) = ten_entries_in_one_segment().await;
    // Simulate a crash in the middle of writing entry 10: keep only its first bytes, then
    // leave garbage where the rest would have been.
    let decoded = decode_records(&bytes);
    assert_eq!(decoded.records.len(), 10);
    let tenth = decoded.records[9].offset;
    let f = std::fs::OpenOptions::new().write(true).open(segment.path()).expect("open segment");
    f.set_len(tenth + 5).expect("chop");
    f.set_len(tenth + 4096).expect("re-extend");
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xAB; 64], tenth + 100).expect("garbage");
    drop(f);

    let mut log = LogStore::open(dir.path()).expect("reopen");
    assert_eq!(indexes(&mut log).await, (1..=9).collect::<Vec<_>>());
    append_durably(&mut log, vec![put_entry(2, 10), put_entry(2, 11)]).await;
    drop(log);
    let mut log = LogStore::open(dir.path()).expect("reopen again");
    assert_eq!(indexes(&mut log).await, (1..=11).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_bad_record_with_valid_records_after_it_is_corruption_not_a_torn_tail() {
    let (dir, segment, bytes) = ten_entries_in_one_segment().await;
    let decoded = decode_records(&bytes);
    let fifth = decoded.records[4].offset;
    // One flipped byte in entry 5's payload: entries 6 to 10, acknowledged, follow it.
    let f = std::fs::OpenOptions::new().write(true).open(segment.path()).expect("open segment");
    let flipped = bytes[fifth as usize + 12] ^ 0x20;
    std::os::unix::fs::FileExt::write_all_at(&f, &[flipped], fifth + 12).expect("flip");
    drop(f);

    let error = LogStore::open(dir.path()).err().expect("a corrupt log must not open").to_string();
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
async fn zero_fill_is_not_mistaken_for_records_or_damage() {
    let dir = tempfile::tempdir().expect("temp dir");
    for round in 0..3u64 {
        let mut log = LogStore::open(dir.path()).expect("open");
        let first = round * 10 + 1;
        append_durably(&mut log, (first..first + 10).map(|i| put_entry(1, i)).collect()).await;
        assert_eq!(indexes(&mut log).await, (1..first + 10).collect::<Vec<_>>());
    }
    let segment =
        std::fs::read_dir(dir.path().join("log")).expect("ls").next().expect("segment").expect("entry");
    assert!(
        segment.metadata().expect("stat").len() >= 1024 * 1024,
        "the newest segment is zero-filled ahead"
    );
}

#[tokio::test]
async fn truncate_and_purge_survive_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let mut log = LogStore::open(dir.path()).expect("open");
        append_durably(&mut log, (1..=50).map(|i| put_entry(1, i)).collect()).await;
        log.truncate(log_id(1, 1, 41)).await.expect("truncate");
        append_durably(&mut log, (41..=45).map(|i| put_entry(2, i)).collect()).await;
        log.purge(log_id(1, 1, 20)).await.expect("purge");
    }
    let mut log = LogStore::open(dir.path()).expect("reopen");
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
        let mut log = LogStore::open(dir.path()).expect("open");
        append_durably(&mut log, (1..=5).map(|i| put_entry(1, i)).collect()).await;
        log.purge(log_id(3, 2, 100)).await.expect("purge");
        append_durably(&mut log, (101..=103).map(|i| put_entry(3, i)).collect()).await;
    }
    let mut log = LogStore::open(dir.path()).expect("reopen");
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
