//! Durable state in RocksDB: everything tern must not forget across a crash.
//!
//! One column family per concern, so each can be read, trimmed and compacted on its own:
//!
//! | family | key | value |
//! |---|---|---|
//! | `meta` | a name (`format`, `outbox_next`, ...) | fixed-width big-endian numbers |
//! | `outbox` | sequence number (u64, big-endian, so keys sort in order) | a versioned [`OutAlert`] |
//! | `cursors` | sink name | the next sequence number that sink has not passed |
//! | `dedupe` | recently applied MQTT messages | (durable state) |
//! | `keys` | rule and key | per-key partial matches and buffered events (durable state) |
//! | `groups` | stream group | watermark, reorder buffer, window state (durable state) |
//!
//! Values are encoded with postcard behind a one-byte format version, so a later build can
//! read what an earlier one wrote (and refuse, with a message, what it cannot).
//!
//! Writes that belong together go in one [`rocksdb::WriteBatch`]: the engine thread writes
//! the alerts of an input batch together with the state change that produced them, before the
//! input is acknowledged.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use rocksdb::{
    ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions,
};

use crate::delivery::OutAlert;

/// Format of the state directory as a whole; bumped when a family changes incompatibly.
pub const FORMAT: u32 = 1;

/// Format byte in front of every encoded value. Format 2 added the target sinks to outbox
/// entries; every other value reads the same in both.
const VALUE_VERSION: u8 = 2;

/// An alert read back from the outbox.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its place in the outbox.
    pub seq: u64,
    /// The alert, shared by the outbox's recent entries and the sinks it is handed to.
    pub alert: Arc<OutAlert>,
    /// The sinks its rule sent it to when it fired; `None` for entries from a format-1
    /// directory, which are routed by the rules running now.
    pub sinks: Option<Arc<[String]>>,
}

/// Column family names.
pub mod cf {
    /// Small named values.
    pub const META: &str = "meta";
    /// Alerts not yet passed by every sink.
    pub const OUTBOX: &str = "outbox";
    /// Per sink, the next outbox sequence number to deliver.
    pub const CURSORS: &str = "cursors";
    /// Recently applied MQTT messages, to drop redeliveries.
    pub const DEDUPE: &str = "dedupe";
    /// Per-key engine state.
    pub const KEYS: &str = "keys";
    /// Per-group engine state.
    pub const GROUPS: &str = "groups";
    /// Every family, in creation order.
    pub const ALL: [&str; 6] = [META, OUTBOX, CURSORS, DEDUPE, KEYS, GROUPS];
}

const FORMAT_KEY: &[u8] = b"format";
const OUTBOX_NEXT_KEY: &[u8] = b"outbox_next";

/// Above this many entries a trim deletes a range instead of each entry.
const TRIM_POINTS: u64 = 65_536;

/// An open state directory.
pub struct Store {
    db: DB,
    path: PathBuf,
    sync: bool,
    /// Every outbox entry before this has been deleted (the low-water mark of trims).
    trimmed: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// Per-family tuning. The engine's families churn: a key's record is rewritten while it holds
/// a partial match and deleted when the match completes or expires, so most of what reaches
/// the disk is soon a tombstone. Files dense in tombstones are compacted early, which keeps the
/// directory near the size of the live state instead of its history.
fn family_options(name: &str) -> Options {
    let mut o = Options::default();
    o.set_level_compaction_dynamic_level_bytes(true);
    match name {
        // A queue: written once, read once in order, deleted in ranges.
        cf::OUTBOX => o.set_write_buffer_size(16 << 20),
        cf::KEYS | cf::GROUPS | cf::DEDUPE => {
            o.set_write_buffer_size(32 << 20);
            // A file is marked for compaction when 1/4 of any 4096 consecutive entries are
            // deletions.
            o.add_compact_on_deletion_collector_factory(4096, 1024, 0.25);
            // Records of keys that went quiet are rewritten at least weekly, so files of
            // deleted keys do not linger at the bottom level.
            o.set_periodic_compaction_seconds(7 * 24 * 3600);
        }
        _ => {}
    }
    o
}

impl Store {
    /// Opens (creating if needed) the state directory `dir`. `sync` makes every engine write
    /// wait for the disk (fsync), which survives power loss; without it a write survives a
    /// crash of tern but not of the machine.
    pub fn open(dir: &Path, sync: bool) -> anyhow::Result<Store> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // An edge gateway: few background threads, a modest write buffer.
        opts.increase_parallelism(2);
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(3);
        // Rarely written families (cursors, meta) would otherwise pin every write-ahead log
        // file since their last flush: past this size the oldest memtables are flushed and
        // the logs they pinned deleted.
        opts.set_max_total_wal_size(64 << 20);
        let families = cf::ALL
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, family_options(name)));
        let db = DB::open_cf_descriptors(&opts, dir, families).with_context(|| {
            format!(
                "cannot open the state directory {} (is another tern using it?)",
                dir.display()
            )
        })?;
        let mut store = Store {
            db,
            path: dir.to_owned(),
            sync,
            trimmed: Default::default(),
        };
        *store.trimmed.get_mut() = store.outbox_first()?.unwrap_or(0);
        match store.get_u64(cf::META, FORMAT_KEY)? {
            None => store.put_meta(FORMAT_KEY, u64::from(FORMAT))?,
            Some(f) if f > u64::from(FORMAT) => bail!(
                "the state directory {} was written by a newer tern (format {f}; this build reads up to {FORMAT})",
                dir.display()
            ),
            Some(_) => {}
        }
        Ok(store)
    }

    /// Opens `dir` for reading only (while a `tern run` may hold it).
    pub fn open_read_only(dir: &Path) -> anyhow::Result<Store> {
        let opts = Options::default();
        let db = DB::open_cf_for_read_only(&opts, dir, cf::ALL, false)
            .with_context(|| format!("cannot open the state directory {}", dir.display()))?;
        Ok(Store {
            db,
            path: dir.to_owned(),
            sync: false,
            trimmed: Default::default(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn family(&self, name: &str) -> anyhow::Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(name)
            .with_context(|| format!("the state directory has no `{name}` column family"))
    }

    fn get_u64(&self, family: &str, key: &[u8]) -> anyhow::Result<Option<u64>> {
        let cf = self.family(family)?;
        let Some(v) = self.db.get_pinned_cf(cf, key)? else {
            return Ok(None);
        };
        let bytes: [u8; 8] = v
            .as_ref()
            .try_into()
            .map_err(|_| anyhow::anyhow!("a corrupt `{family}` entry ({} bytes)", v.len()))?;
        Ok(Some(u64::from_be_bytes(bytes)))
    }

    fn put_meta(&self, key: &[u8], value: u64) -> anyhow::Result<()> {
        let cf = self.family(cf::META)?;
        self.db.put_cf(cf, key, value.to_be_bytes())?;
        Ok(())
    }

    /// The sequence number the next alert gets.
    pub fn outbox_next(&self) -> anyhow::Result<u64> {
        Ok(self.get_u64(cf::META, OUTBOX_NEXT_KEY)?.unwrap_or(0))
    }

    /// A batch of writes applied together by [`Store::write`].
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            store: self,
            batch: WriteBatch::default(),
        }
    }

    /// Applies `batch` atomically (and durably when the store syncs).
    pub fn write(&self, batch: Batch<'_>) -> anyhow::Result<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(self.sync);
        self.db
            .write_opt(batch.batch, &opts)
            .context("cannot write the state")?;
        Ok(())
    }

    /// Up to `limit` alerts from sequence number `from` on, in order.
    pub fn outbox_read(&self, from: u64, limit: usize) -> anyhow::Result<Vec<Entry>> {
        let cf = self.family(cf::OUTBOX)?;
        let start = from.to_be_bytes();
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&start, Direction::Forward))
            .take(limit)
        {
            let (k, v) = item?;
            let seq = u64::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("a corrupt outbox key"))?,
            );
            let (alert, sinks) = decode_entry(&v).with_context(|| format!("outbox entry {seq}"))?;
            out.push(Entry {
                seq,
                alert: Arc::new(alert),
                sinks,
            });
        }
        Ok(out)
    }

    /// Every sink cursor stored.
    pub fn cursors(&self) -> anyhow::Result<Vec<(String, u64)>> {
        let cf = self.family(cf::CURSORS)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item?;
            let seq = u64::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("a corrupt cursor"))?,
            );
            out.push((String::from_utf8_lossy(&k).into_owned(), seq));
        }
        Ok(out)
    }

    /// Records that `sink` has passed every alert before `next`. Not synced: losing the
    /// latest cursor in a machine crash only means some alerts are delivered again, with
    /// the same ids.
    pub fn set_cursor(&self, sink: &str, next: u64) -> anyhow::Result<()> {
        let cf = self.family(cf::CURSORS)?;
        self.db.put_cf(cf, sink.as_bytes(), next.to_be_bytes())?;
        Ok(())
    }

    /// Forgets the cursor of a sink no longer configured.
    pub fn remove_cursor(&self, sink: &str) -> anyhow::Result<()> {
        let cf = self.family(cf::CURSORS)?;
        self.db.delete_cf(cf, sink.as_bytes())?;
        Ok(())
    }

    /// The sequence number of the oldest outbox entry, if any.
    fn outbox_first(&self) -> anyhow::Result<Option<u64>> {
        let cf = self.family(cf::OUTBOX)?;
        match self.db.iterator_cf(cf, IteratorMode::Start).next() {
            Some(item) => {
                let (k, _) = item?;
                Ok(k.as_ref().try_into().ok().map(u64::from_be_bytes))
            }
            None => Ok(None),
        }
    }

    /// Deletes the outbox entries before `below` (every sink has passed them).
    ///
    /// One point deletion per entry, from where the last trim stopped: a range deletion per
    /// trim would be cheaper to write, but every outbox read then re-sorts all the range
    /// tombstones in the memtable, which made the dispatchers the live pipeline's bottleneck.
    pub fn outbox_trim(&self, below: u64) -> anyhow::Result<()> {
        use std::sync::atomic::Ordering;
        let cf = self.family(cf::OUTBOX)?;
        let from = self.trimmed.load(Ordering::Acquire);
        if below <= from {
            return Ok(());
        }
        if below - from > TRIM_POINTS {
            // A long backlog gone at once (a sink back after an outage): one range.
            self.db
                .delete_range_cf(cf, from.to_be_bytes(), below.to_be_bytes())?;
        } else {
            let mut batch = WriteBatch::default();
            for seq in from..below {
                batch.delete_cf(cf, seq.to_be_bytes());
            }
            self.db.write(batch)?;
        }
        self.trimmed.fetch_max(below, Ordering::AcqRel);
        Ok(())
    }

    /// Every record of a family, in key order (loading state at startup).
    pub fn scan(&self, family: &str) -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let cf = self.family(family)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item?;
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    /// Records and bytes (keys plus values) per record kind of a family, by the first byte
    /// of the key and the name that follows it (`tern state`).
    pub fn usage(&self, family: &str) -> anyhow::Result<Vec<(String, u64, u64)>> {
        let cf = self.family(family)?;
        let mut by: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item?;
            let name = match k.iter().position(|b| *b == 0) {
                Some(nul) if nul > 1 => {
                    format!("{}:{}", k[0] as char, String::from_utf8_lossy(&k[1..nul]))
                }
                _ => family.to_owned(),
            };
            let e = by.entry(name).or_default();
            e.0 += 1;
            e.1 += (k.len() + v.len()) as u64;
        }
        Ok(by.into_iter().map(|(n, (c, b))| (n, c, b)).collect())
    }

    /// Number of outbox entries from `from` on (counted, for tests and `tern state`).
    pub fn outbox_len(&self, from: u64) -> anyhow::Result<u64> {
        let cf = self.family(cf::OUTBOX)?;
        let start = from.to_be_bytes();
        let mut n = 0;
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&start, Direction::Forward))
        {
            item?;
            n += 1;
        }
        Ok(n)
    }
}

/// Record changes collected before they are written (so a failed write can be tried again
/// with the same changes).
#[derive(Debug, Default)]
pub struct Ops {
    ops: Vec<Op>,
}

/// One change: family, key, and the new value (`None`: delete).
type Op = (&'static str, Vec<u8>, Option<Vec<u8>>);

impl Ops {
    /// Number of changes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when there is no change.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Forgets every change.
    pub fn clear(&mut self) {
        self.ops.clear();
    }
}

impl crate::engine::persist::StateWriter for Ops {
    fn put(&mut self, family: &'static str, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push((family, key, Some(value)));
    }

    fn delete(&mut self, family: &'static str, key: Vec<u8>) {
        self.ops.push((family, key, None));
    }
}

/// Writes applied together.
pub struct Batch<'a> {
    store: &'a Store,
    batch: WriteBatch,
}

impl Batch<'_> {
    /// Appends `alert` to the outbox as number `seq`, and records `seq + 1` as the next.
    pub fn put_alert(
        &mut self,
        seq: u64,
        alert: &OutAlert,
        sinks: &[String],
    ) -> anyhow::Result<()> {
        let outbox = self.store.family(cf::OUTBOX)?;
        self.batch
            .put_cf(outbox, seq.to_be_bytes(), encode(&(alert, sinks))?);
        let meta = self.store.family(cf::META)?;
        self.batch
            .put_cf(meta, OUTBOX_NEXT_KEY, (seq + 1).to_be_bytes());
        Ok(())
    }

    /// Adds collected changes, in order.
    pub fn apply(&mut self, ops: &Ops) -> anyhow::Result<()> {
        for (family, key, value) in &ops.ops {
            let cf = self.store.family(family)?;
            match value {
                Some(v) => self.batch.put_cf(cf, key, v),
                None => self.batch.delete_cf(cf, key),
            }
        }
        Ok(())
    }

    /// Number of writes in the batch.
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    /// True when the batch holds no write.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }
}

/// A value behind its format byte.
pub fn encode<T: serde::Serialize>(value: &T) -> anyhow::Result<Vec<u8>> {
    let mut out = vec![VALUE_VERSION];
    postcard::to_io(value, &mut out).context("cannot encode state")?;
    Ok(out)
}

/// Reads what [`encode`] wrote.
pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> anyhow::Result<T> {
    match bytes.split_first() {
        Some((1..=VALUE_VERSION, rest)) => {
            postcard::from_bytes(rest).context("corrupt state value")
        }
        Some((v, _)) => {
            bail!("state value of format {v}; this build reads up to format {VALUE_VERSION}")
        }
        None => bail!("an empty state value"),
    }
}

/// Reads an outbox entry: format 1 held the alert alone.
fn decode_entry(bytes: &[u8]) -> anyhow::Result<(OutAlert, Option<Arc<[String]>>)> {
    match bytes.split_first() {
        Some((1, rest)) => Ok((
            postcard::from_bytes(rest).context("corrupt outbox entry")?,
            None,
        )),
        Some((_, _)) => {
            let (alert, sinks): (OutAlert, Vec<String>) = decode(bytes)?;
            Ok((alert, Some(sinks.into())))
        }
        None => bail!("an empty outbox entry"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::compile::hir::Severity;
    use crate::delivery::AlertKind;

    pub(crate) fn alert(id: &str) -> OutAlert {
        OutAlert {
            id: id.into(),
            rule: "r".into(),
            name: "r".into(),
            kind: AlertKind::Match,
            severity: Severity::Warning,
            key_text: "k".into(),
            event_time: 5,
            emitted_at: 6,
            json: format!("{{\"id\":\"{id}\"}}"),
        }
    }

    #[test]
    fn outbox_survives_reopening_and_trims() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), true).unwrap();
            assert_eq!(s.outbox_next().unwrap(), 0);
            let mut b = s.batch();
            for i in 0..5 {
                b.put_alert(i, &alert(&format!("a{i}")), &["web".to_string()])
                    .unwrap();
            }
            s.write(b).unwrap();
            s.set_cursor("web", 2).unwrap();
        }
        let s = Store::open(dir.path(), true).unwrap();
        assert_eq!(s.outbox_next().unwrap(), 5);
        assert_eq!(s.cursors().unwrap(), [("web".to_string(), 2)]);
        let read = s.outbox_read(2, 2).unwrap();
        assert_eq!(
            read.iter()
                .map(|e| (e.seq, e.alert.id.as_str()))
                .collect::<Vec<_>>(),
            [(2, "a2"), (3, "a3")]
        );
        assert_eq!(read[0].sinks.as_deref(), Some(&["web".to_string()][..]));
        s.outbox_trim(3).unwrap();
        assert_eq!(s.outbox_read(0, 10).unwrap()[0].seq, 3);
        assert_eq!(s.outbox_len(0).unwrap(), 2);
        s.outbox_trim(2).unwrap();
        assert_eq!(s.outbox_len(0).unwrap(), 2, "a trim never goes back");
        s.outbox_trim(4).unwrap();
        assert_eq!(s.outbox_read(0, 10).unwrap()[0].seq, 4);
        // A backlog too long for point deletions is trimmed as a range.
        s.outbox_trim(5 + TRIM_POINTS).unwrap();
        assert_eq!(s.outbox_len(0).unwrap(), 0);
    }

    #[test]
    fn newer_format_is_refused_and_values_are_versioned() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), false).unwrap();
            s.put_meta(FORMAT_KEY, u64::from(FORMAT) + 1).unwrap();
        }
        let err = Store::open(dir.path(), false).unwrap_err().to_string();
        assert!(err.contains("newer tern"), "{err}");
        let bytes = encode(&alert("x")).unwrap();
        assert_eq!(decode::<OutAlert>(&bytes).unwrap(), alert("x"));
        let mut future = bytes.clone();
        future[0] = 9;
        assert!(decode::<OutAlert>(&future).is_err());
        assert!(decode::<OutAlert>(&[]).is_err());
    }

    #[test]
    fn format_1_outbox_entries_still_read() {
        // What the first format wrote: the alert alone, behind a 1.
        let mut v1 = vec![1u8];
        v1.extend(postcard::to_allocvec(&alert("old")).unwrap());
        let (a, sinks) = decode_entry(&v1).unwrap();
        assert_eq!(a, alert("old"));
        assert!(sinks.is_none());
        let v2 = encode(&(&alert("new"), &["s".to_string()][..])).unwrap();
        let (a, sinks) = decode_entry(&v2).unwrap();
        assert_eq!(a.id, "new");
        assert_eq!(sinks.as_deref(), Some(&["s".to_string()][..]));
    }

    #[test]
    fn a_locked_directory_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path(), false).unwrap();
        let err = format!("{:#}", Store::open(dir.path(), false).unwrap_err());
        assert!(err.contains("another tern"), "{err}");
    }
}
