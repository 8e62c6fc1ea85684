//! What the consumer does about brokers that lose records' places and groups that lose members:
//! re-reads from before the chain end ([`Reread`]), silent partitions re-read from before their
//! committed offset, and partitions no live member processes ([`OrphanWatch`]). Both failures
//! were measured with tansu 0.6 (ARCHITECTURE.md, "tansu 0.6 behaviours we measured").

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::run::Shared;
use crate::session::RebalanceCtx;

/// How far before the chain end the first re-read starts; each retry reads four times as far.
pub(crate) const REREAD_WINDOW: i64 = 1024;
/// An assigned partition with no record for this long is re-read from before its committed offset.
pub(crate) const SILENT_AFTER: Duration = Duration::from_secs(3);

/// A re-read that proves whether records between the chain end and the first record received exist.
///
/// Real Kafka serves a fetch from any offset. tansu 0.6 answers a fetch from an offset inside a
/// record batch with the *next* batch, so a consumer resuming at a committed offset inside a batch
/// silently skips the rest of that batch (measured: fetching from 300 returned 392 first, where
/// 300..391 were records). The re-read seeks to `from`, some way before the chain end `expect`,
/// and widens the distance until a record at or before `expect` arrives (nothing was skipped after
/// all, or the skipped records now arrive) or a read from offset 0 still starts past it (a real gap).
#[derive(Debug)]
pub(crate) struct Reread {
    pub(crate) expect: i64,
    pub(crate) from: i64,
}

pub(crate) enum RereadStep {
    Reached,
    Gap,
    Again(i64),
}

impl Reread {
    pub(crate) fn start(expect: i64) -> Reread {
        Reread {
            expect,
            from: (expect - REREAD_WINDOW).max(0),
        }
    }

    pub(crate) fn next(&mut self, offset: i64) -> RereadStep {
        if offset <= self.expect {
            RereadStep::Reached
        } else if self.from == 0 {
            RereadStep::Gap
        } else {
            self.from = (self.expect - (self.expect - self.from) * 4).max(0);
            RereadStep::Again(self.from)
        }
    }
}

pub(crate) fn seek(consumer: &StreamConsumer<RebalanceCtx>, topic: &str, p: i32, offset: i64) {
    if let Err(e) = consumer.seek(topic, p, Offset::Offset(offset), Duration::from_secs(5)) {
        tracing::warn!(partition = p, offset, error = %e, "seek failed");
    }
}

/// Finds partitions that no live member processes. With tansu 0.6 a SIGKILLed member's partitions
/// sometimes stay with nobody after its session expired, or the group hands the live members an
/// empty assignment while dead members keep every partition (the soak test found readings waiting
/// for minutes; `crash.rs` restarts a stalled processor for the same reason). Every
/// [`ORPHAN_CHECK`], a partition not assigned here that has work waiting (records in its log past
/// its chain end in the lake, or a unit whose writer died between its gate commit and the rest),
/// and whose chain end has not moved for `patience`, is orphaned. A member with an empty
/// assignment watches too: a partition with a live owner moves on or has nothing waiting, so spare
/// members still cause no rebalances.
pub(crate) struct OrphanWatch {
    patience: Duration,
    last_check: Instant,
    /// Per partition: its chain end at the last change, and when that was.
    seen: HashMap<i32, (Option<i64>, Instant)>,
}

const ORPHAN_CHECK: Duration = Duration::from_secs(5);

impl OrphanWatch {
    pub(crate) fn new(patience: Duration) -> OrphanWatch {
        OrphanWatch {
            patience,
            last_check: Instant::now(),
            seen: HashMap::new(),
        }
    }

    pub(crate) async fn orphaned(
        &mut self,
        s: &Shared,
        consumer: &StreamConsumer<RebalanceCtx>,
        topic: &str,
        mine: &[i32],
    ) -> Option<i32> {
        if self.last_check.elapsed() < ORPHAN_CHECK {
            return None;
        }
        self.last_check = Instant::now();
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(2))
            .ok()?;
        let partitions: Vec<i32> = md
            .topics()
            .first()?
            .partitions()
            .iter()
            .map(|p| p.id())
            .collect();
        for p in partitions {
            if mine.contains(&p) {
                self.seen.remove(&p);
                continue;
            }
            let Ok(chain) = hexpulse_lake::unit::chain(&s.lake, topic, p).await else {
                continue;
            };
            let Ok((_, high)) = consumer.fetch_watermarks(topic, p, Duration::from_secs(2)) else {
                continue;
            };
            let end = chain.end;
            let waiting = chain.unfinished || high - 1 > end.unwrap_or(-1);
            let entry = self.seen.entry(p).or_insert((end, Instant::now()));
            if entry.0 != end || !waiting {
                *entry = (end, Instant::now());
                continue;
            }
            if entry.1.elapsed() >= self.patience {
                self.seen.clear();
                return Some(p);
            }
        }
        None
    }
}

/// The group's committed offset of `p` (`None`: nothing committed), or the error of asking.
pub(crate) fn committed_offset(
    consumer: &StreamConsumer<RebalanceCtx>,
    topic: &str,
    p: i32,
) -> Result<Option<i64>, rdkafka::error::KafkaError> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, p);
    let got = consumer.committed_offsets(tpl, Duration::from_secs(5))?;
    Ok(match got.find_partition(topic, p).map(|e| e.offset()) {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    })
}

/// The raw topic's partition count, from the broker's metadata.
pub(crate) fn partition_count(consumer: &StreamConsumer<RebalanceCtx>, topic: &str) -> Option<i32> {
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .ok()?;
    let n = md.topics().first()?.partitions().len();
    (n > 0).then_some(n as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rereads_widen_until_they_reach_the_chain_end_or_the_log_start() {
        let mut r = Reread::start(5000);
        assert_eq!(r.from, 5000 - REREAD_WINDOW);
        // The broker skipped again: read from four times as far back, then from the start.
        assert!(matches!(r.next(6000), RereadStep::Again(f) if f == 5000 - 4 * REREAD_WINDOW));
        assert!(matches!(r.next(6000), RereadStep::Again(0)));
        assert!(matches!(r.next(6000), RereadStep::Gap));
        let mut r = Reread::start(5000);
        assert!(matches!(r.next(4990), RereadStep::Reached));
        assert!(matches!(Reread::start(10).next(10), RereadStep::Reached));
        assert_eq!(Reread::start(10).from, 0);
    }
}
