//! The live tier on the query side: a mirror of the processors' live rows (rows validated but not
//! yet committed to the lake), kept current by polling each processor, and [`LiveTable`], which
//! answers a stream table as its lake snapshot plus exactly the live rows past that snapshot.
//!
//! The seam ([`hexpulse_lake::live`]): a catalog build reads, with each stream table's files, the
//! last offset committed to that table per partition (`e`). A scan then takes, per partition, the
//! live rows above `e` from one source whose coverage is contiguous from `e + 1`. Rows at or below
//! `e` are in the snapshot's files; rows above it are not. So an answer never counts a row twice,
//! and misses only rows no source has made live yet.
//!
//! The mirror drops rows once every catalog still in use has them in its snapshot (catalogs are
//! tracked by weak references to their [`Ends`]), and a source's rows as soon as it fails to answer
//! (a restarted or replaced processor delays freshness; its partitions' next owner serves them).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch, new_null_array};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::Result;
use datafusion::datasource::TableProvider;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::union::UnionExec;
use hexpulse_lake::live::{self, Coverage, LiveHeader};
use hexpulse_lake::unit::STREAM_TABLES;
use tokio_util::sync::CancellationToken;

/// Polls of a live source that failed (its rows are dropped until it answers again).
pub const LIVE_POLL_ERRORS: &str = "hexpulse_query_live_poll_errors_total";
/// Polls skipped because the live mirror is at its memory bound.
pub const LIVE_FULL: &str = "hexpulse_query_live_full_total";
/// One poll round over every source and stream table: how far behind the processors' live rows
/// the mirror runs, on top of the poll interval.
pub const LIVE_POLL_SECONDS: &str = "hexpulse_query_live_poll_seconds";
/// Stream tables of the catalogs alive ([`LiveTier::catalogs_alive`]): about four (one catalog)
/// when the service is idle; a figure that only grows means catalogs are not dropped, and the
/// mirror stops trimming.
pub const LIVE_CATALOGS: &str = "hexpulse_query_live_catalogs";

/// A partition of a topic.
pub type TopicPartition = (String, i32);

/// What one catalog's snapshot of a stream table holds, per partition: the last offset committed
/// to that table (`None`: nothing yet). Live rows above it complete the snapshot.
#[derive(Debug, Default)]
pub struct Ends {
    pub table: usize,
    pub ends: BTreeMap<TopicPartition, Option<i64>>,
}

/// One partition's live rows from one source, contiguous: records `[from, to]`.
#[derive(Debug, Clone)]
struct Part {
    coverage: Coverage,
    segments: VecDeque<Segment>,
    /// The segments' bytes, their cached conformed copies included.
    bytes: usize,
}

/// The rows of records `[first, last]` as the source sent them, and the same rows conformed to
/// the table's schema as the last query asked for it ([`conform`]): the lake's scans read strings
/// as views, the processors send plain strings, and casting every live row again for every query
/// cost the query service more than keeping the cast once.
#[derive(Debug, Clone)]
struct Segment {
    first: i64,
    last: i64,
    batch: RecordBatch,
    conformed: Option<Conformed>,
}

#[derive(Debug, Clone)]
struct Conformed {
    batch: RecordBatch,
    /// The bytes of the columns the cast made (counted in [`Part::bytes`]).
    bytes: usize,
}

impl Segment {
    fn bytes(&self) -> usize {
        batch_bytes(&self.batch) + self.conformed.as_ref().map_or(0, |c| c.bytes)
    }

    /// The segment's rows as batches of `schema`; conformed once per schema. Returns the change
    /// of the segment's bytes too.
    fn conformed(&mut self, schema: &SchemaRef) -> Result<(RecordBatch, isize)> {
        if let Some(c) = &self.conformed
            && c.batch.schema().fields() == schema.fields()
        {
            return Ok((c.batch.clone(), 0));
        }
        let (batch, bytes) = conform(&self.batch, schema)?;
        let old = self.conformed.take().map_or(0, |c| c.bytes);
        if bytes > 0 {
            self.conformed = Some(Conformed {
                batch: batch.clone(),
                bytes,
            });
        }
        Ok((batch, bytes as isize - old as isize))
    }
}

impl Part {
    fn new(from: i64) -> Part {
        Part {
            coverage: Coverage { from, to: from - 1 },
            segments: VecDeque::new(),
            bytes: 0,
        }
    }
}

/// The bytes a segment's rows hold ([`crate::bounded::batch_bytes`]): a batch decoded from a live
/// answer shares the answer's one allocation among its buffers, which `get_array_memory_size`
/// would count once per buffer (the mirror then sat at its bound and skipped polls).
fn batch_bytes(b: &RecordBatch) -> usize {
    crate::bounded::batch_bytes(b) as usize
}

/// What the mirror holds of one source (a processor's address).
#[derive(Debug, Default)]
struct Source {
    instance: Option<String>,
    topic: String,
    /// Per stream table: the newest segment number received, and the partitions.
    since: [u64; 4],
    tables: [BTreeMap<i32, Part>; 4],
    /// When the source last answered every table, ms.
    answered_ms: Option<i64>,
}

impl Source {
    fn bytes(&self) -> usize {
        self.tables
            .iter()
            .flat_map(|t| t.values())
            .map(|p| p.bytes)
            .sum()
    }
}

#[derive(Default)]
struct Mirror {
    sources: BTreeMap<SocketAddr, Source>,
    /// Rises whenever the rows change (for ETags).
    generation: u64,
}

/// The query service's live tier.
pub struct LiveTier {
    /// `http://host:port` of each processor (a name resolving to several addresses means each).
    urls: Vec<url::Url>,
    client: reqwest::Client,
    memory_bytes: usize,
    mirror: Mutex<Mirror>,
    catalogs: Mutex<Vec<Weak<Ends>>>,
}

impl fmt::Debug for LiveTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveTier")
            .field("urls", &self.urls)
            .finish()
    }
}

/// Why a source's answer was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("answer: {0}")]
    Decode(#[from] datafusion::arrow::error::ArrowError),
    #[error("status {0}")]
    Status(reqwest::StatusCode),
    #[error("source url {0}: {1}")]
    Url(String, String),
}

impl hexpulse_common::fault::Classify for LiveError {
    fn fault(&self) -> hexpulse_common::fault::Fault {
        use hexpulse_common::fault::Fault;
        match self {
            // A processor that restarts, moves or is busy: the next poll may reach it.
            LiveError::Http(_) | LiveError::Status(_) => Fault::External,
            // An answer that does not decode is a processor of another version, or a bug.
            LiveError::Decode(_) => Fault::Internal,
            LiveError::Url(..) => Fault::User,
        }
    }
}

impl LiveTier {
    /// A tier over the processors at `urls` (`http://host:port`), holding at most `memory_bytes`.
    pub fn new(urls: &[String], memory_bytes: usize) -> Result<LiveTier, LiveError> {
        let urls = urls
            .iter()
            .map(|u| {
                let url =
                    url::Url::parse(u).map_err(|e| LiveError::Url(u.clone(), e.to_string()))?;
                if url.scheme() != "http" || url.host_str().is_none() {
                    return Err(LiveError::Url(
                        u.clone(),
                        "expected http://host:port".into(),
                    ));
                }
                Ok(url)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(5))
            .build()?;
        Ok(LiveTier {
            urls,
            client,
            memory_bytes,
            mirror: Mutex::default(),
            catalogs: Mutex::default(),
        })
    }

    /// Polls every source every `interval` until `stop`.
    pub async fn run(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.poll().await;
        }
    }

    /// One round: every address of every source, every stream table.
    pub async fn poll(&self) {
        let started = std::time::Instant::now();
        let mut addrs = BTreeSet::new();
        for url in &self.urls {
            let port = url.port_or_known_default().unwrap_or(80);
            match url.host() {
                Some(url::Host::Ipv4(ip)) => _ = addrs.insert(SocketAddr::from((ip, port))),
                Some(url::Host::Ipv6(ip)) => _ = addrs.insert(SocketAddr::from((ip, port))),
                Some(url::Host::Domain(name)) => {
                    match tokio::net::lookup_host((name, port)).await {
                        Ok(found) => addrs.extend(found),
                        Err(e) => tracing::debug!(%url, error = %e, "live source does not resolve"),
                    }
                }
                None => {}
            }
        }
        {
            // Sources that no longer resolve are gone.
            let mut m = self.mirror.lock().expect("live lock");
            let before = m.sources.len();
            m.sources.retain(|a, _| addrs.contains(a));
            if m.sources.len() != before {
                m.generation += 1;
            }
        }
        let polls = addrs.iter().map(|a| self.poll_source(*a));
        for (addr, result) in addrs.iter().zip(futures::future::join_all(polls).await) {
            if let Err(e) = result {
                tracing::debug!(%addr, error = %e, "live source did not answer; dropping its rows");
                metrics::counter!(LIVE_POLL_ERRORS).increment(1);
                let mut m = self.mirror.lock().expect("live lock");
                if m.sources.remove(addr).is_some() {
                    m.generation += 1;
                }
            }
        }
        self.trim();
        metrics::histogram!(LIVE_POLL_SECONDS).record(started.elapsed().as_secs_f64());
    }

    async fn poll_source(&self, addr: SocketAddr) -> Result<(), LiveError> {
        for (table, name) in STREAM_TABLES.iter().enumerate() {
            let (instance, since, full) = {
                let m = self.mirror.lock().expect("live lock");
                let s = m.sources.get(&addr);
                let full =
                    m.sources.values().map(Source::bytes).sum::<usize>() >= self.memory_bytes;
                (
                    s.and_then(|s| s.instance.clone()),
                    s.map_or(0, |s| s.since[table]),
                    full,
                )
            };
            if full {
                // Over the bound: wait until catalogs catch up and the mirror drops rows.
                metrics::counter!(LIVE_FULL).increment(1);
                return Ok(());
            }
            let mut req = self
                .client
                .get(format!("http://{addr}/v1/live/{name}"))
                .query(&[("since", since.to_string())]);
            if let Some(i) = &instance {
                req = req.query(&[("instance", i)]);
            }
            let resp = req.send().await?;
            if !resp.status().is_success() {
                return Err(LiveError::Status(resp.status()));
            }
            let body = resp.bytes().await?;
            let (header, _, batches) = live::decode(&body)?;
            let mut m = self.mirror.lock().expect("live lock");
            let changed = apply(m.sources.entry(addr).or_default(), table, header, batches);
            if changed {
                m.generation += 1;
            }
        }
        let mut m = self.mirror.lock().expect("live lock");
        if let Some(s) = m.sources.get_mut(&addr) {
            s.answered_ms = Some(hexpulse_common::time::now_ms());
        }
        Ok(())
    }

    /// The partitions any source serves now.
    pub fn partitions(&self) -> BTreeSet<TopicPartition> {
        let m = self.mirror.lock().expect("live lock");
        m.sources
            .values()
            .flat_map(|s| {
                s.tables
                    .iter()
                    .flat_map(|t| t.keys())
                    .map(|p| (s.topic.clone(), *p))
            })
            .collect()
    }

    /// Remembers a catalog's ends: rows it still needs stay in the mirror while it lives.
    pub fn track(&self, ends: &Arc<Ends>) {
        let mut c = self.catalogs.lock().expect("live lock");
        c.retain(|w| w.strong_count() > 0);
        c.push(Arc::downgrade(ends));
    }

    /// The stream tables of catalogs still alive (a catalog has one per stream table): those of
    /// the current catalog and of any query still running on an older one. Trimming waits for the
    /// oldest, so a catalog that is never dropped would hold every live row from then on.
    pub fn catalogs_alive(&self) -> usize {
        let mut c = self.catalogs.lock().expect("live lock");
        c.retain(|w| w.strong_count() > 0);
        c.len()
    }

    /// Drops the rows that every live catalog's snapshot holds.
    fn trim(&self) {
        let alive: Vec<Arc<Ends>> = {
            let mut c = self.catalogs.lock().expect("live lock");
            c.retain(|w| w.strong_count() > 0);
            c.iter().filter_map(Weak::upgrade).collect()
        };
        metrics::gauge!(LIVE_CATALOGS).set(alive.len() as f64);
        // Per table and partition: the lowest end any live catalog reads from.
        let mut floor: BTreeMap<(usize, &TopicPartition), Option<i64>> = BTreeMap::new();
        for e in &alive {
            for (tp, end) in &e.ends {
                floor
                    .entry((e.table, tp))
                    .and_modify(|f| *f = (*f).min(*end))
                    .or_insert(*end);
            }
        }
        let mut m = self.mirror.lock().expect("live lock");
        for s in m.sources.values_mut() {
            let topic = s.topic.clone();
            for (t, parts) in s.tables.iter_mut().enumerate() {
                for (p, part) in parts.iter_mut() {
                    let Some(Some(end)) = floor.get(&(t, &(topic.clone(), *p))).copied() else {
                        continue;
                    };
                    while part.segments.front().is_some_and(|seg| seg.last <= end) {
                        let seg = part.segments.pop_front().expect("front");
                        part.bytes -= seg.bytes();
                        part.coverage.from = seg.last + 1;
                    }
                }
            }
        }
    }

    /// The live rows of `ends.table` above each partition's end, as batches of `schema` (columns
    /// matched by name; a column the live rows lack reads as NULL).
    pub fn rows(&self, ends: &Ends, schema: &SchemaRef) -> Vec<RecordBatch> {
        let mut m = self.mirror.lock().expect("live lock");
        let mut out = Vec::new();
        for ((topic, p), end) in &ends.ends {
            // The source whose rows continue the snapshot and reach furthest.
            let best = m
                .sources
                .iter()
                .filter(|(_, s)| s.topic == *topic)
                .filter_map(|(addr, s)| Some((*addr, s.tables[ends.table].get(p)?)))
                .filter(|(_, part)| match end {
                    Some(e) => part.coverage.from <= e + 1 && part.coverage.to >= *e,
                    None => true,
                })
                .max_by_key(|(_, part)| part.coverage.to)
                .map(|(addr, _)| addr);
            let Some(part) =
                best.and_then(|a| m.sources.get_mut(&a)?.tables[ends.table].get_mut(p))
            else {
                continue;
            };
            let mut grown = 0isize;
            for seg in &mut part.segments {
                if end.is_some_and(|e| seg.last <= e) {
                    continue;
                }
                let rows = seg.conformed(schema).and_then(|(b, g)| {
                    grown += g;
                    // The segment that straddles the end keeps only the rows past it.
                    match end {
                        Some(e) if seg.first <= *e => Ok(live::rows_after(&b, *e)?),
                        _ => Ok(b),
                    }
                });
                match rows {
                    Ok(b) if b.num_rows() == 0 => {}
                    Ok(b) => out.push(b),
                    Err(err) => {
                        tracing::warn!(error = %err, "live rows do not fit the table; left out")
                    }
                }
            }
            part.bytes = part.bytes.saturating_add_signed(grown);
        }
        out
    }

    /// Rises whenever the live rows change.
    pub fn generation(&self) -> u64 {
        self.mirror.lock().expect("live lock").generation
    }

    /// The oldest time at which a source last answered (ms): answers hold every live row made up
    /// to then. `None` while no source answers.
    pub fn as_of_ms(&self) -> Option<i64> {
        let m = self.mirror.lock().expect("live lock");
        m.sources.values().map(|s| s.answered_ms).min().flatten()
    }
}

/// Applies one answer of a source for `table`. Returns whether rows changed.
fn apply(s: &mut Source, table: usize, header: LiveHeader, batches: Vec<RecordBatch>) -> bool {
    let mut changed = false;
    if s.instance.as_deref() != Some(header.instance.as_str()) {
        // A new instance (or the first answer): its answer holds all its segments; the other tables
        // start over at their next poll.
        changed = s.tables.iter().any(|t| !t.is_empty());
        *s = Source {
            instance: Some(header.instance.clone()),
            topic: header.topic.clone(),
            ..Default::default()
        };
    }
    let parts = &mut s.tables[table];
    let mut gaps = BTreeSet::new();
    for (seg, batch) in header.segments.iter().zip(batches) {
        let part = parts
            .entry(seg.partition)
            .or_insert_with(|| Part::new(seg.first));
        if seg.first != part.coverage.to + 1 {
            if seg.first > part.coverage.to + 1 {
                gaps.insert(seg.partition);
            }
            *part = Part::new(seg.first);
        }
        part.bytes += batch_bytes(&batch);
        part.coverage.to = seg.last;
        changed |= batch.num_rows() > 0;
        part.segments.push_back(Segment {
            first: seg.first,
            last: seg.last,
            batch,
            conformed: None,
        });
    }
    // Partitions the source no longer owns go; a partition whose coverage does not end where ours
    // does (we missed segments, or the source started it again) is asked for in full next time.
    let before = parts.len();
    parts.retain(|p, _| header.partitions.contains_key(p));
    changed |= parts.len() != before;
    let mut resync = false;
    for (p, cov) in &header.partitions {
        match parts.get_mut(p) {
            // Ours may start later than the source's after a trim, but not after a gap in what
            // we received (the source still holds the rows in between).
            Some(part)
                if part.coverage.to == cov.to
                    && !(gaps.contains(p) && part.coverage.from > cov.from) => {}
            _ if cov.to < cov.from => {
                changed |= parts
                    .insert(*p, Part::new(cov.from))
                    .is_some_and(|old| old.bytes > 0);
            }
            _ => resync = true,
        }
    }
    if resync {
        changed = true;
        parts.clear();
        s.since[table] = 0;
    } else {
        s.since[table] = header.seq;
    }
    changed
}

/// `batch` with the columns of `schema`, by name: cast where the types differ, NULL where missing.
/// Also returns the bytes of the columns it made (0: every column is the batch's own).
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<(RecordBatch, usize)> {
    if batch.schema().fields() == schema.fields() {
        let b = RecordBatch::try_new(schema.clone(), batch.columns().to_vec())?;
        return Ok((b, 0));
    }
    let mut made = 0;
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| {
            let c = match batch.column_by_name(f.name()) {
                Some(c) if c.data_type() == f.data_type() => return Ok(c.clone()),
                Some(c) => datafusion::arrow::compute::cast(c, f.data_type())?,
                None => new_null_array(f.data_type(), batch.num_rows()),
            };
            made += crate::bounded::array_bytes(c.as_ref()) as usize;
            Ok(c)
        })
        .collect::<Result<_>>()?;
    Ok((RecordBatch::try_new(schema.clone(), columns)?, made))
}

/// A stream table as its lake snapshot plus the live rows past it.
pub struct LiveTable {
    lake: Arc<dyn TableProvider>,
    live: Arc<LiveTier>,
    ends: Arc<Ends>,
}

impl fmt::Debug for LiveTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveTable")
            .field("ends", &self.ends)
            .finish()
    }
}

impl LiveTable {
    pub fn new(lake: Arc<dyn TableProvider>, live: Arc<LiveTier>, ends: Ends) -> LiveTable {
        let ends = Arc::new(ends);
        live.track(&ends);
        LiveTable { lake, live, ends }
    }
}

#[async_trait]
impl TableProvider for LiveTable {
    fn schema(&self) -> SchemaRef {
        self.lake.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // The live rows are not filtered by the scan: every filter stays above it.
        Ok(self
            .lake
            .supports_filters_pushdown(filters)?
            .into_iter()
            .map(|f| match f {
                TableProviderFilterPushDown::Exact => TableProviderFilterPushDown::Inexact,
                other => other,
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let lake = self.lake.scan(state, projection, filters, limit).await?;
        let rows = self.live.rows(&self.ends, &self.schema());
        if rows.is_empty() {
            return Ok(lake);
        }
        let live = MemorySourceConfig::try_new_exec(&[rows], self.schema(), projection.cloned())?;
        UnionExec::try_new(vec![lake, live])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{AsArray, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use hexpulse_lake::live::SegmentHeader;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new(
            "src_offset",
            DataType::Int64,
            false,
        )]))
    }

    fn batch(offsets: std::ops::RangeInclusive<i64>) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![Arc::new(Int64Array::from_iter_values(offsets))],
        )
        .unwrap()
    }

    fn answer(
        instance: &str,
        seq: u64,
        cov: &[(i32, i64, i64)],
        segs: &[(i32, i64, i64)],
    ) -> (LiveHeader, Vec<RecordBatch>) {
        let header = LiveHeader {
            instance: instance.into(),
            seq,
            topic: "raw".into(),
            partitions: cov
                .iter()
                .map(|(p, f, t)| (*p, Coverage { from: *f, to: *t }))
                .collect(),
            segments: segs
                .iter()
                .enumerate()
                .map(|(i, (p, f, l))| SegmentHeader {
                    seq: i as u64 + 1,
                    partition: *p,
                    first: *f,
                    last: *l,
                })
                .collect(),
        };
        (
            header,
            segs.iter().map(|(_, f, l)| batch(*f..=*l)).collect(),
        )
    }

    fn tier() -> LiveTier {
        LiveTier::new(&[], 1 << 30).unwrap()
    }

    fn load(t: &LiveTier, port: u16, a: (LiveHeader, Vec<RecordBatch>)) {
        let mut m = t.mirror.lock().unwrap();
        let s = m
            .sources
            .entry(SocketAddr::from(([127, 0, 0, 1], port)))
            .or_default();
        apply(s, 0, a.0, a.1);
    }

    fn counted(t: &LiveTier, ends: &[(i32, Option<i64>)]) -> Vec<i64> {
        let ends = Ends {
            table: 0,
            ends: ends
                .iter()
                .map(|(p, e)| (("raw".to_string(), *p), *e))
                .collect(),
        };
        let mut v: Vec<i64> = t
            .rows(&ends, &schema())
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn rows_past_the_snapshot_are_counted_once_at_every_end() {
        let t = tier();
        load(
            &t,
            1,
            answer("a", 2, &[(0, 10, 19)], &[(0, 10, 14), (0, 15, 19)]),
        );
        // Every end inside or around the coverage: exactly the offsets above it.
        for e in 9..=19 {
            assert_eq!(
                counted(&t, &[(0, Some(e))]),
                ((e + 1)..=19).collect::<Vec<_>>(),
                "end {e}"
            );
        }
        // No commit yet: everything.
        assert_eq!(counted(&t, &[(0, None)]).len(), 10);
        // A snapshot behind the coverage (rows 9 and before are no source's): nothing, not a gap.
        assert!(counted(&t, &[(0, Some(7))]).is_empty());
        // A snapshot past the coverage: nothing.
        assert!(counted(&t, &[(0, Some(25))]).is_empty());
        // A partition the catalog does not know: nothing.
        assert!(counted(&t, &[(1, Some(0))]).is_empty());
    }

    #[test]
    fn overlapping_sources_count_once_and_a_dropped_partition_goes() {
        let t = tier();
        load(&t, 1, answer("a", 1, &[(0, 10, 14)], &[(0, 10, 14)]));
        // Another processor took the partition over from the chain end 12 (a rebalance).
        load(&t, 2, answer("b", 1, &[(0, 13, 16)], &[(0, 13, 16)]));
        assert_eq!(counted(&t, &[(0, Some(12))]), vec![13, 14, 15, 16]);
        assert_eq!(counted(&t, &[(0, Some(11))]), vec![12, 13, 14]);
        // The first one no longer owns it.
        load(&t, 1, answer("a", 1, &[], &[]));
        assert_eq!(counted(&t, &[(0, Some(11))]), Vec::<i64>::new());
        assert_eq!(counted(&t, &[(0, Some(12))]), vec![13, 14, 15, 16]);
    }

    #[test]
    fn missed_segments_and_new_instances_start_over() {
        let t = tier();
        load(&t, 1, answer("a", 1, &[(0, 0, 4)], &[(0, 0, 4)]));
        // Segments 2..3 never arrived: the coverage does not match, so the table is asked in full.
        let mut a = answer("a", 4, &[(0, 0, 9)], &[(0, 8, 9)]);
        a.0.segments[0].seq = 4;
        load(&t, 1, a);
        {
            let m = t.mirror.lock().unwrap();
            let s = m.sources.values().next().unwrap();
            assert_eq!(s.since[0], 0);
            assert!(s.tables[0].is_empty());
        }
        assert!(counted(&t, &[(0, None)]).is_empty());
        load(&t, 1, answer("a", 4, &[(0, 0, 9)], &[(0, 0, 4), (0, 5, 9)]));
        assert_eq!(counted(&t, &[(0, Some(2))]), (3..=9).collect::<Vec<_>>());
        // A restart: the new instance's rows replace the old ones.
        load(&t, 1, answer("b", 1, &[(0, 6, 7)], &[(0, 6, 7)]));
        assert_eq!(counted(&t, &[(0, Some(5))]), vec![6, 7]);
    }

    #[test]
    fn trimming_keeps_what_a_live_catalog_needs() {
        let t = tier();
        load(&t, 1, answer("a", 2, &[(0, 0, 9)], &[(0, 0, 4), (0, 5, 9)]));
        let old = Arc::new(Ends {
            table: 0,
            ends: [(("raw".into(), 0), Some(2))].into(),
        });
        let new = Arc::new(Ends {
            table: 0,
            ends: [(("raw".into(), 0), Some(7))].into(),
        });
        t.track(&old);
        t.track(&new);
        t.trim();
        assert_eq!(counted(&t, &[(0, Some(2))]), (3..=9).collect::<Vec<_>>());
        drop(old);
        t.trim();
        // Only the newer catalog is left: the segment it holds whole goes.
        assert!(counted(&t, &[(0, Some(2))]).is_empty());
        assert_eq!(counted(&t, &[(0, Some(7))]), vec![8, 9]);
    }

    /// Live rows with a string column, asked for as the lake's scans read strings (views).
    fn with_text(offsets: std::ops::RangeInclusive<i64>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("src_offset", DataType::Int64, false),
            Field::new("device_key", DataType::Utf8, false),
        ]));
        let keys: Vec<String> = offsets.clone().map(|o| format!("device-{o:04}")).collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(offsets)),
                Arc::new(datafusion::arrow::array::StringArray::from(keys)),
            ],
        )
        .unwrap()
    }

    /// The bytes the mirror holds of its one source.
    fn held(t: &LiveTier) -> usize {
        let m = t.mirror.lock().unwrap();
        m.sources.values().map(Source::bytes).sum()
    }

    #[test]
    fn live_rows_are_cast_once_per_schema_and_counted_until_trimmed() {
        let t = tier();
        let (header, _) = answer("a", 2, &[(0, 0, 9)], &[(0, 0, 4), (0, 5, 9)]);
        load(&t, 1, (header, vec![with_text(0..=4), with_text(5..=9)]));
        let sent = held(&t);
        let views: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("src_offset", DataType::Int64, false),
            Field::new("device_key", DataType::Utf8View, false),
        ]));
        let ends = |e| Ends {
            table: 0,
            ends: [(("raw".to_string(), 0), e)].into(),
        };
        let first = t.rows(&ends(Some(2)), &views);
        let again = t.rows(&ends(Some(2)), &views);
        let offsets = |bs: &[RecordBatch]| -> Vec<i64> {
            bs.iter()
                .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
                .collect()
        };
        assert_eq!(offsets(&first), (3..=9).collect::<Vec<_>>());
        assert_eq!(offsets(&again), offsets(&first));
        let keys = |bs: &[RecordBatch]| -> Vec<String> {
            bs.iter()
                .flat_map(|b| {
                    b.column(1)
                        .as_string_view()
                        .iter()
                        .map(|k| k.unwrap().to_string())
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        assert_eq!(keys(&again)[0], "device-0003");
        assert_eq!(keys(&again), keys(&first));
        // The whole segment past the end comes from the cast kept the first time, not a new one.
        assert!(Arc::ptr_eq(first[1].column(1), again[1].column(1)));
        // The kept casts count against the mirror's bound while they are held, and go with their rows.
        let kept = held(&t);
        assert!(kept > sent, "{kept} > {sent}");
        let catalog = Arc::new(ends(Some(9)));
        t.track(&catalog);
        t.trim();
        assert_eq!(held(&t), 0);
        assert_eq!(
            t.mirror
                .lock()
                .unwrap()
                .sources
                .values()
                .next()
                .unwrap()
                .bytes(),
            0
        );
    }
}
