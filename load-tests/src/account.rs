//! Accounting mode: after a run, compares the [`Ledger`] (what was sent, what ingest answered) with
//! what the lake holds, read through the query service's SQL endpoint (`POST /v1/sql`; the token
//! needs the `raw` group to read the `rejected` table) from the `committed` tables: what the Delta
//! logs hold, without the processors' live rows.
//!
//! Readings are grouped by (device key, sequence number): a replay and its original are one group.
//! For each group, with `acc` copies acknowledged (HTTP 200, not in the rejected list) and `unk`
//! copies whose fate is unknown (no answer, or a 429/5xx refusal of the whole request):
//! - a valid reading (or replay) must land `acc ..= acc + unk` times in all: exactly one row set in
//!   its kind's table (sensors: one row per measurement) and the other copies as `duplicate`;
//! - a reading the processors must refuse lands in `rejected` with its class's reason, once per
//!   acknowledged copy (up to `unk` more), and never in a valid table;
//! - a reading ingest must refuse (bad signature, other key, unknown device) gets that item code and
//!   never reaches the lake; neither do the readings of malformed or oversize requests, which must be
//!   refused as a whole (400 / 413).
//!
//! Lake rows of the run's devices whose (key, seq) was never sent are reported as invented.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::adversary::{Answer, Class, Expected, Ledger, Sent};

/// Where and how to read the lake.
#[derive(Debug, Clone)]
pub struct LakeReader {
    /// Query service base URL.
    pub url: String,
    /// Bearer token (with the `raw` group), if the service wants one.
    pub token: Option<String>,
    pub client: reqwest::Client,
}

/// Rows of one (key, seq) in the lake.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Landed {
    /// Rows in the valid tables, by table.
    valid: BTreeMap<String, u64>,
    /// Rows in `rejected`, by reason.
    rejected: BTreeMap<String, u64>,
}

/// The accounting result.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Readings sent per class.
    pub sent_by_class: BTreeMap<String, u64>,
    /// Readings per class and ingest answer (accepted, rejected:<code>, refused:<status>, no_answer).
    pub answers_by_class: BTreeMap<String, BTreeMap<String, u64>>,
    /// Requests per request class and status.
    pub requests: BTreeMap<String, u64>,
    /// Mismatches per class and kind; empty when everything is where it belongs.
    pub mismatches: BTreeMap<String, BTreeMap<String, u64>>,
    pub mismatch_total: u64,
    /// Examples of mismatches (at most 20), for debugging.
    pub examples: Vec<String>,
    /// Readings acknowledged by ingest, and groups checked.
    pub acknowledged: u64,
    pub groups: u64,
    /// Lake rows of this run read back (valid tables, rejected).
    pub lake_valid_rows: u64,
    pub lake_rejected_rows: u64,
    /// How long after the run the lake held everything acknowledged, confirmed by the full read.
    pub settle_s: f64,
    /// How long after the run the lake's row count first reached what the acknowledged readings
    /// make (polled every 250 ms; the full read then confirmed it): the pipeline's lag, without the
    /// cost of the accounting's own read.
    pub visible_s: f64,
}

impl LakeReader {
    pub fn new(url: &str, token: Option<String>) -> LakeReader {
        LakeReader {
            url: url.trim_end_matches('/').to_string(),
            token,
            client: reqwest::Client::new(),
        }
    }

    /// Runs `sql`; the answer as JSON rows.
    pub async fn sql(&self, sql: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let mut req = self
            .client
            .post(format!("{}/v1/sql", self.url))
            .header("accept", "application/json")
            .body(sql.to_string());
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await?;
        if !status.is_success() {
            anyhow::bail!("query service answered {status} to {sql:?}: {body}");
        }
        Ok(body.as_array().cloned().unwrap_or_default())
    }

    /// Rows of each table (from Parquet metadata: cheap).
    async fn rows(&self) -> anyhow::Result<[u64; 4]> {
        let row = self
            .sql("SELECT (SELECT count(*) FROM committed.heartbeat) AS heartbeat, (SELECT count(*) FROM committed.sensor) AS sensor, (SELECT count(*) FROM committed.road) AS road, (SELECT count(*) FROM committed.rejected) AS rejected")
            .await?;
        let row = row.first();
        Ok(TABLES.map(|t| row.and_then(|r| r[t].as_u64()).unwrap_or(0)))
    }

    /// Rows in all four tables.
    async fn total_rows(&self) -> anyhow::Result<u64> {
        Ok(self.rows().await?.iter().sum())
    }

    /// Grouped rows of `keys` from every valid table and `rejected`. Each table is read in pages, each
    /// a range of device keys with about [`PAGE_ROWS`] rows (keys are uniform hex), so that no answer
    /// exceeds the service's row limit and each page's aggregation stays small. Every page scans its
    /// table, so a table has as few pages as that allows.
    async fn read(&self, keys: &HashSet<String>) -> anyhow::Result<HashMap<(String, u64), Landed>> {
        let mut out: HashMap<(String, u64), Landed> = HashMap::new();
        for (table, rows) in TABLES.into_iter().zip(self.rows().await?) {
            for (lo, hi) in &key_ranges(rows.div_ceil(PAGE_ROWS).max(1) as u32) {
                let filter = match (lo, hi) {
                    (None, None) => "device_key IS NOT NULL".to_string(),
                    (Some(lo), None) => format!("device_key >= '{lo}'"),
                    (None, Some(hi)) => format!("device_key < '{hi}'"),
                    (Some(lo), Some(hi)) => format!("device_key >= '{lo}' AND device_key < '{hi}'"),
                };
                let (cols, group) = if table == "rejected" {
                    ("device_key, seq, reason", "device_key, seq, reason")
                } else {
                    ("device_key, seq", "device_key, seq")
                };
                let sql = format!(
                    "SELECT {cols}, count(*) AS n FROM committed.{table} WHERE {filter} AND seq IS NOT NULL GROUP BY {group}"
                );
                for row in self.sql(&sql).await? {
                    let key = row["device_key"].as_str().unwrap_or_default().to_string();
                    if !keys.contains(&key) {
                        continue;
                    }
                    let seq = row["seq"].as_u64().unwrap_or(0);
                    let count = row["n"].as_u64().unwrap_or(0);
                    let landed = out.entry((key, seq)).or_default();
                    if table == "rejected" {
                        let reason = row["reason"].as_str().unwrap_or("?").to_string();
                        *landed.rejected.entry(reason).or_default() += count;
                    } else {
                        *landed.valid.entry(table.to_string()).or_default() += count;
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The lake's tables that readings land in.
const TABLES: [&str; 4] = ["heartbeat", "sensor", "road", "rejected"];

/// Rows per page of [`LakeReader::read`]: well under the query service's default `max_rows`
/// (100,000), since keys are spread evenly but not exactly.
const PAGE_ROWS: u64 = 50_000;

/// `pages` ranges of the key space that together cover every string: the first has no lower bound,
/// the last no upper bound, and the bounds between are 4-digit hex prefixes spread evenly.
fn key_ranges(pages: u32) -> Vec<(Option<String>, Option<String>)> {
    let pages = pages.clamp(1, 1 << 16);
    let bound = |i: u32| {
        (i > 0 && i < pages).then(|| format!("{:04x}", (i as u64 * 65_536 / pages as u64)))
    };
    (0..pages).map(|i| (bound(i), bound(i + 1))).collect()
}

fn answer_label(a: &Answer) -> String {
    match a {
        Answer::Pending => "pending".into(),
        Answer::Accepted => "accepted".into(),
        Answer::Rejected(c) => format!("rejected:{c}"),
        Answer::Refused(s) => format!("refused:{s}"),
        Answer::NoAnswer => "no_answer".into(),
    }
}

/// Item codes by which ingest says it could not hand the item to Kafka (the broker did not
/// acknowledge in time, or the producer queue was full): the item may or may not be in the log.
const NOT_DELIVERED: [&str; 2] = ["delivery_failed", "queue_full"];

/// An answer that leaves the fate open: the request, or the item, may have been enqueued.
fn unknown_fate(a: &Answer) -> bool {
    matches!(a, Answer::NoAnswer | Answer::Pending)
        || matches!(a, Answer::Refused(s) if *s == 429 || *s >= 500)
        || matches!(a, Answer::Rejected(c) if NOT_DELIVERED.contains(&c.as_str()))
}

struct Tally<'a> {
    report: &'a mut Report,
}

impl Tally<'_> {
    fn miss(&mut self, class: Class, what: &str, example: String) {
        *self
            .report
            .mismatches
            .entry(class.as_str().to_string())
            .or_default()
            .entry(what.to_string())
            .or_default() += 1;
        self.report.mismatch_total += 1;
        if self.report.examples.len() < 20 {
            self.report
                .examples
                .push(format!("{}/{what}: {example}", class.as_str()));
        }
    }
}

/// Checks one (key, seq) group against what landed.
fn check_group(items: &[&Sent], landed: &Landed, t: &mut Tally<'_>) {
    let class = items
        .iter()
        .map(|s| s.class)
        .find(|c| *c != Class::Valid && *c != Class::Replay)
        .unwrap_or(items[0].class);
    let first = items[0];
    let id = format!(
        "device {} seq {}",
        &first.key[..16.min(first.key.len())],
        first.seq
    );
    let acc = items
        .iter()
        .filter(|s| s.answer == Answer::Accepted)
        .count() as u64;
    let unk = items.iter().filter(|s| unknown_fate(&s.answer)).count() as u64;
    let valid_rows: u64 = landed.valid.values().sum();
    let rejected_rows: u64 = landed.rejected.values().sum();
    let kind_table = first.kind.as_str();
    match class.expected() {
        Expected::Valid => {
            for s in items {
                if let Answer::Rejected(code) = &s.answer
                    && !unknown_fate(&s.answer)
                {
                    t.miss(class, &format!("refused_by_ingest:{code}"), id.clone());
                }
            }
            let sets = if first.rows == 0 {
                0
            } else {
                valid_rows / u64::from(first.rows)
            };
            let wrong_table = landed.valid.keys().any(|k| k != kind_table);
            let partial = first.rows != 0 && !valid_rows.is_multiple_of(u64::from(first.rows));
            let dups = landed.rejected.get("duplicate").copied().unwrap_or(0);
            let other_rejections = rejected_rows - dups;
            let copies = sets + dups;
            if wrong_table || partial {
                t.miss(class, "wrong_rows", format!("{id}: {landed:?}"));
            } else if acc > 0 && sets == 0 {
                t.miss(class, "missing", format!("{id}: {landed:?}"));
            } else if sets > 1 {
                t.miss(class, "doubled", format!("{id}: {sets} row sets"));
            } else if other_rejections > 0 {
                t.miss(
                    class,
                    "wrongly_rejected",
                    format!("{id}: {:?}", landed.rejected),
                );
            } else if copies < acc || copies > acc + unk {
                t.miss(
                    class,
                    "copies",
                    format!("{id}: {copies} copies landed, {acc} acknowledged, {unk} unknown"),
                );
            }
        }
        Expected::IngestRejects(code) => {
            for s in items {
                match &s.answer {
                    Answer::Rejected(c) if c == code => {}
                    a if unknown_fate(a) || matches!(a, Answer::Refused(_)) => {}
                    a => t.miss(class, "ingest_answer", format!("{id}: {}", answer_label(a))),
                }
            }
            if valid_rows + rejected_rows > 0 {
                t.miss(class, "reached_lake", format!("{id}: {landed:?}"));
            }
        }
        Expected::LakeRejects(reason) => {
            for s in items {
                if let Answer::Rejected(code) = &s.answer
                    && !unknown_fate(&s.answer)
                {
                    t.miss(class, &format!("refused_by_ingest:{code}"), id.clone());
                }
            }
            let right = landed.rejected.get(reason).copied().unwrap_or(0);
            if valid_rows > 0 {
                t.miss(class, "stored_as_valid", format!("{id}: {landed:?}"));
            } else if right != rejected_rows {
                t.miss(
                    class,
                    "wrong_reason",
                    format!("{id}: {:?}", landed.rejected),
                );
            } else if right < acc {
                t.miss(class, "rejection_missing", id);
            } else if right > acc + unk {
                t.miss(class, "rejection_doubled", format!("{id}: {right}"));
            }
        }
        Expected::RequestRefused(status) => {
            for s in items {
                // Refused(0): built but never sent (the run ended first).
                let unsent = s.answer == Answer::Refused(0);
                if s.answer != Answer::Refused(status) && !unknown_fate(&s.answer) && !unsent {
                    t.miss(
                        class,
                        "request_answer",
                        format!("{id}: {}", answer_label(&s.answer)),
                    );
                }
            }
            if valid_rows + rejected_rows > 0 {
                t.miss(class, "reached_lake", format!("{id}: {landed:?}"));
            }
        }
    }
}

/// Compares `ledger` with the lake. Waits up to `settle` for the lake to hold every acknowledged
/// reading (the processors and the query service's catalog lag a little), then reports.
pub async fn account(
    ledger: &Ledger,
    lake: &LakeReader,
    run_keys: &HashSet<String>,
    settle: Duration,
    progress: bool,
) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let mut groups: BTreeMap<(&str, u64), Vec<&Sent>> = BTreeMap::new();
    for s in &ledger.sent {
        *report
            .sent_by_class
            .entry(s.class.as_str().to_string())
            .or_default() += 1;
        *report
            .answers_by_class
            .entry(s.class.as_str().to_string())
            .or_default()
            .entry(answer_label(&s.answer))
            .or_default() += 1;
        groups.entry((s.key.as_str(), s.seq)).or_default().push(s);
    }
    for ((class, status), n) in &ledger.requests {
        report.requests.insert(format!("{class}:{status}"), *n);
    }
    report.acknowledged = ledger
        .sent
        .iter()
        .filter(|s| s.answer == Answer::Accepted)
        .count() as u64;
    report.groups = groups.len() as u64;
    // Every acknowledged group must show up somewhere (a valid table or rejected).
    let owed: HashSet<(&str, u64)> = groups
        .iter()
        .filter(|(_, items)| items.iter().any(|s| s.answer == Answer::Accepted))
        .map(|(k, _)| *k)
        .collect();
    // The rows the acknowledged readings must make at least: a cheap count (Parquet metadata) tells
    // when they can all be there, before the full read checks that they are.
    let min_rows: u64 = groups
        .values()
        .map(|items| {
            let acc = items
                .iter()
                .filter(|s| s.answer == Answer::Accepted)
                .count() as u64;
            match items[0].class.expected() {
                _ if acc == 0 => 0,
                Expected::Valid => u64::from(items[0].rows) + acc - 1,
                Expected::LakeRejects(_) => acc,
                _ => 0,
            }
        })
        .sum();
    let start = Instant::now();
    let mut visible = None;
    let landed = loop {
        let total = lake.total_rows().await?;
        if total < min_rows && start.elapsed() < settle {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        visible.get_or_insert(start.elapsed().as_secs_f64());
        let landed = lake.read(run_keys).await?;
        let missing = owed
            .iter()
            .filter(|(k, s)| !landed.contains_key(&(k.to_string(), *s)))
            .count();
        if progress {
            eprintln!(
                "[account] {:>4.0}s lake holds {} of {} acknowledged readings",
                start.elapsed().as_secs_f64(),
                owed.len() - missing,
                owed.len()
            );
        }
        if missing == 0 || start.elapsed() >= settle {
            break landed;
        }
        visible = None;
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    report.visible_s = visible.unwrap_or(f64::NAN);
    report.settle_s = start.elapsed().as_secs_f64();
    // One more read after everything is there: late doubles would show now.
    let landed = if report.settle_s < settle.as_secs_f64() {
        tokio::time::sleep(Duration::from_secs(3)).await;
        lake.read(run_keys).await?
    } else {
        landed
    };
    let none = Landed::default();
    let mut t = Tally {
        report: &mut report,
    };
    for ((key, seq), items) in &groups {
        let l = landed.get(&(key.to_string(), *seq)).unwrap_or(&none);
        check_group(items, l, &mut t);
    }
    for ((key, seq), l) in &landed {
        t.report.lake_valid_rows += l.valid.values().sum::<u64>();
        t.report.lake_rejected_rows += l.rejected.values().sum::<u64>();
        if !groups.contains_key(&(key.as_str(), *seq)) {
            t.miss(
                Class::Valid,
                "invented",
                format!("device {key} seq {seq}: {l:?}"),
            );
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(class: Class, seq: u64, answer: Answer) -> Sent {
        Sent {
            key: "ab".repeat(32),
            seq,
            kind: hexpulse_schemas::wire::KindName::Sensor,
            class,
            rows: 3,
            answer,
        }
    }

    fn landed(valid: u64, rejected: &[(&str, u64)]) -> Landed {
        let mut l = Landed::default();
        if valid > 0 {
            l.valid.insert("sensor".into(), valid);
        }
        for (r, n) in rejected {
            l.rejected.insert((*r).into(), *n);
        }
        l
    }

    #[test]
    fn key_ranges_put_every_key_in_exactly_one_page() {
        use rand::Rng;
        let mut rng = rand::rng();
        let mut keys: Vec<String> = (0..2_000)
            .map(|_| {
                (0..32)
                    .map(|_| format!("{:02x}", rng.random::<u8>()))
                    .collect()
            })
            .collect();
        keys.extend(
            [
                "", "0", "0000", "fffe", "ffff", "ffffff", "zz", "ABCD", "8000",
            ]
            .map(String::from),
        );
        for pages in [1, 2, 3, 7, 46, 256, 65_536, 100_000] {
            let ranges = key_ranges(pages);
            assert_eq!(ranges.len(), pages.min(1 << 16) as usize);
            for k in &keys {
                let holding = ranges
                    .iter()
                    .filter(|(lo, hi)| {
                        lo.as_deref().is_none_or(|lo| k.as_str() >= lo)
                            && hi.as_deref().is_none_or(|hi| k.as_str() < hi)
                    })
                    .count();
                assert_eq!(holding, 1, "{k:?} is in {holding} of {pages} pages");
            }
        }
        // Uniform keys spread evenly: no page of 46 holds more than twice its share.
        let ranges = key_ranges(46);
        for (lo, hi) in &ranges {
            let n = keys
                .iter()
                .filter(|k| {
                    k.len() == 64
                        && lo.as_deref().is_none_or(|lo| k.as_str() >= lo)
                        && hi.as_deref().is_none_or(|hi| k.as_str() < hi)
                })
                .count();
            assert!(n < 2 * 2_000 / 46, "{lo:?}..{hi:?} holds {n} of 2000");
        }
    }

    /// The mismatch kinds `check_group` finds for `items` against `l`.
    fn verdict(items: &[Sent], l: &Landed) -> Vec<String> {
        let mut report = Report::default();
        let refs: Vec<&Sent> = items.iter().collect();
        check_group(
            &refs,
            l,
            &mut Tally {
                report: &mut report,
            },
        );
        report
            .mismatches
            .values()
            .flat_map(|m| m.keys().cloned())
            .collect()
    }

    #[test]
    fn valid_readings_must_land_exactly_once() {
        let ok = [sent(Class::Valid, 1, Answer::Accepted)];
        assert!(verdict(&ok, &landed(3, &[])).is_empty());
        assert_eq!(verdict(&ok, &landed(0, &[])), ["missing"]);
        assert_eq!(verdict(&ok, &landed(6, &[])), ["doubled"]);
        assert_eq!(verdict(&ok, &landed(2, &[])), ["wrong_rows"]);
        assert_eq!(
            verdict(&ok, &landed(0, &[("late", 1)])),
            ["missing"],
            "rejected instead of stored"
        );
        // Not acknowledged: may be there once, or not at all; never twice.
        let unknown = [sent(Class::Valid, 1, Answer::NoAnswer)];
        assert!(verdict(&unknown, &landed(0, &[])).is_empty());
        assert!(verdict(&unknown, &landed(3, &[])).is_empty());
        // Refused by ingest although valid.
        let refused = [sent(
            Class::Valid,
            1,
            Answer::Rejected("bad_signature".into()),
        )];
        assert_eq!(
            verdict(&refused, &landed(0, &[])),
            ["refused_by_ingest:bad_signature"]
        );
    }

    #[test]
    fn replays_land_once_and_the_copies_as_duplicates() {
        let group = [
            sent(Class::Valid, 1, Answer::Accepted),
            sent(Class::Replay, 1, Answer::Accepted),
        ];
        assert!(verdict(&group, &landed(3, &[("duplicate", 1)])).is_empty());
        assert_eq!(verdict(&group, &landed(3, &[])), ["copies"]);
        assert_eq!(verdict(&group, &landed(6, &[])), ["doubled"]);
    }

    #[test]
    fn refused_readings_keep_their_reason_and_stay_out_of_valid_tables() {
        let future = [sent(Class::Future, 1, Answer::Accepted)];
        assert!(verdict(&future, &landed(0, &[("future_timestamp", 1)])).is_empty());
        assert_eq!(verdict(&future, &landed(3, &[])), ["stored_as_valid"]);
        assert_eq!(
            verdict(&future, &landed(0, &[("late", 1)])),
            ["wrong_reason"]
        );
        assert_eq!(verdict(&future, &landed(0, &[])), ["rejection_missing"]);
        assert_eq!(
            verdict(&future, &landed(0, &[("future_timestamp", 2)])),
            ["rejection_doubled"]
        );
        let bad = [sent(Class::BadSignature, 1, Answer::Accepted)];
        let mut v = verdict(&bad, &landed(3, &[]));
        v.sort();
        assert_eq!(v, ["ingest_answer", "reached_lake"]);
        let big = [sent(Class::OversizeBody, 1, Answer::Refused(413))];
        assert!(verdict(&big, &landed(0, &[])).is_empty());
        let never_sent = [sent(Class::OversizeBody, 1, Answer::Refused(0))];
        assert!(verdict(&never_sent, &landed(0, &[])).is_empty());
        let wrong = [sent(Class::OversizeBody, 1, Answer::Refused(400))];
        assert_eq!(verdict(&wrong, &landed(0, &[])), ["request_answer"]);
        assert_eq!(
            verdict(&big, &landed(0, &[("malformed", 1)])),
            ["reached_lake"]
        );
    }
}
