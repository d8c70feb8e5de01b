//! Memory for masking: how many bytes of decompressed and rewritten records the proxy holds at
//! once. A record batch is a peer's input: a few kilobytes of zstd can claim the whole per-batch
//! cap, and a proxy under a container memory limit that decompresses such a batch (and its
//! rewritten copy) is OOM-killed — at that offset, for every consumer, forever. So every buffer
//! that masking grows is first taken from two bounds:
//!
//! - the proxy's [`MemoryBudget`], shared by every connection (`--mask-memory-bytes`);
//! - one [`Allowance`] per record set being masked (`--mask-connection-memory-bytes`): a
//!   connection masks one response and one request at a time, so this bounds a connection.
//!
//! A record set that does not fit its allowance can never be masked by this proxy: the
//! partition is refused for good ([`OverBudget::Connection`]). One that does not fit because
//! other connections hold the budget would fit later ([`OverBudget::Proxy`]). The caller decides
//! the Kafka error; see `crate::masking`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The default bound of the whole proxy: with the proxy's own ~16 MiB and the frames in flight,
/// it keeps a proxy within the 128 MiB memory limit the operator injects.
pub const DEFAULT_PROXY_BYTES: usize = 64 << 20;
/// The default bound of one record set being masked: its decompressed records and their
/// rewritten copy, so batches up to about 15 MiB decompressed are masked (Kafka's default
/// `message.max.bytes` is 1 MiB compressed).
pub const DEFAULT_CONNECTION_BYTES: usize = 32 << 20;

/// Why a buffer could not grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OverBudget {
    /// More than one record set may ever hold: it cannot be masked by this proxy.
    #[error(
        "masking it needs more than {cap} bytes of memory, the most one connection may use \
         (--mask-connection-memory-bytes); produce smaller batches or raise the limit with the \
         proxy's memory limit"
    )]
    Connection {
        /// The bound.
        cap: usize,
    },
    /// The proxy's budget is held by other connections just now.
    #[error(
        "the proxy's masking memory ({limit} bytes, --mask-memory-bytes) is in use by other \
         connections; retry"
    )]
    Proxy {
        /// The bound.
        limit: usize,
    },
}

/// The bytes the whole proxy may hold for masking.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    per_use: usize,
    used: AtomicUsize,
}

static PROXY: OnceLock<MemoryBudget> = OnceLock::new();
static UNBOUNDED: MemoryBudget = MemoryBudget {
    limit: usize::MAX,
    per_use: usize::MAX,
    used: AtomicUsize::new(0),
};

impl MemoryBudget {
    /// A budget of `limit` bytes, at most `per_use` of them for one record set.
    pub fn new(limit: usize, per_use: usize) -> MemoryBudget {
        MemoryBudget {
            limit,
            per_use: per_use.min(limit),
            used: AtomicUsize::new(0),
        }
    }

    /// Makes `budget` the proxy's (once, at start-up; later calls are ignored and say so).
    pub fn install(budget: MemoryBudget) -> bool {
        PROXY.set(budget).is_ok()
    }

    /// The proxy's budget: the installed one, else the defaults. A process-wide bound is
    /// process-wide state; a static keeps it out of every signature between the session and
    /// the masking code.
    pub fn proxy() -> &'static MemoryBudget {
        PROXY.get_or_init(|| MemoryBudget::new(DEFAULT_PROXY_BYTES, DEFAULT_CONNECTION_BYTES))
    }

    /// No bound (benchmarks, fuzzing, unit tests of the engine).
    pub fn unbounded() -> &'static MemoryBudget {
        &UNBOUNDED
    }

    /// An empty allowance for one record set.
    pub fn allowance(&self) -> Allowance<'_> {
        self.part_allowance(1)
    }

    /// An empty allowance for one of `parts` pieces of a record set masked at once: each may
    /// hold `1/parts` of what a record set may, so together they stay within one allowance.
    pub fn part_allowance(&self, parts: usize) -> Allowance<'_> {
        Allowance {
            budget: self,
            cap: self.per_use / parts.max(1),
            held: 0,
        }
    }

    /// Bytes held by all allowances now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// The bytes one record set being masked holds; given back when dropped.
#[derive(Debug)]
pub struct Allowance<'b> {
    budget: &'b MemoryBudget,
    /// The most it may hold.
    cap: usize,
    held: usize,
}

impl Allowance<'_> {
    /// Makes this allowance hold `total` bytes (it never shrinks until dropped).
    pub fn hold(&mut self, total: usize) -> Result<(), OverBudget> {
        if total <= self.held {
            return Ok(());
        }
        if total > self.cap {
            return Err(OverBudget::Connection { cap: self.cap });
        }
        let more = total - self.held;
        self.budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(more)
                    .filter(|&sum| sum <= self.budget.limit)
            })
            .map_err(|_| OverBudget::Proxy {
                limit: self.budget.limit,
            })?;
        self.held = total;
        Ok(())
    }

    /// Bytes held.
    pub fn held(&self) -> usize {
        self.held
    }
}

impl Drop for Allowance<'_> {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.held, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowances_share_the_budget_and_give_it_back() {
        let budget = MemoryBudget::new(100, 60);
        let mut a = budget.allowance();
        a.hold(50).unwrap();
        a.hold(40).unwrap(); // never shrinks
        assert_eq!(a.held(), 50);
        assert_eq!(a.hold(61), Err(OverBudget::Connection { cap: 60 }));
        let mut b = budget.allowance();
        assert_eq!(b.hold(60), Err(OverBudget::Proxy { limit: 100 }));
        b.hold(50).unwrap();
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 50);
        b.hold(60).unwrap();
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn the_parts_of_a_record_set_share_one_allowance() {
        let budget = MemoryBudget::new(100, 60);
        let mut a = budget.part_allowance(2);
        let mut b = budget.part_allowance(2);
        assert_eq!(a.hold(31), Err(OverBudget::Connection { cap: 30 }));
        a.hold(30).unwrap();
        b.hold(30).unwrap();
        assert_eq!(budget.used(), 60);
    }
}
