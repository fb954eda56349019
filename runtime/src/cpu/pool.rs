//! A small team of worker threads that spin between jobs.
//!
//! A decode step of a small model is a few hundred matrix products of tens of
//! microseconds each, separated by a little serial work. A pool whose threads
//! sleep between jobs (rayon's) pays a futex wake-up per product, which costs as
//! much as the product; these workers instead spin on a job counter for a while
//! (`SPIN`) and only then park, so consecutive jobs start within a cache-line
//! round trip. The calling thread takes part in every job as member 0.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks. The gaps inside a forward
/// pass are microseconds; parking after that keeps the pool cheap on a busy
/// machine, where spinning (or yielding, which hands the core away for a whole
/// time slice) would stall every product behind the other processes.
const SPIN: Duration = Duration::from_micros(300);
/// How long the caller spins for the last workers before it parks too.
const CALLER_SPIN: Duration = Duration::from_micros(50);

type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped once per job; workers run the job of each new value.
    generation: AtomicU64,
    /// The current job, valid while `pending > 0` (written before `generation`).
    job: UnsafeCell<Option<Job>>,
    /// Workers still running the current job.
    pending: AtomicUsize,
    /// Workers parked (or about to park) on `wake`.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    /// The caller parked on `done` waiting for `pending` to reach 0.
    caller_waiting: AtomicBool,
    done_lock: Mutex<()>,
    done: Condvar,
    stop: AtomicBool,
    /// A worker's job panicked: re-raised in the caller.
    panicked: AtomicBool,
}

// SAFETY: `job` is written only by the caller of `Pool::run` while no worker
// reads it (every worker has finished the previous job: `pending == 0`), and read
// by workers only after they observe the generation that publishes it.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serialises callers: one job at a time.
    caller: Mutex<()>,
}

impl Pool {
    /// A pool of `threads` members in all (the caller counts as one).
    pub fn new(threads: usize) -> Pool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            pending: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            caller_waiting: AtomicBool::new(false),
            done_lock: Mutex::new(()),
            done: Condvar::new(),
            stop: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
        });
        let workers = (1..threads)
            .map(|id| {
                let s = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("quern-cpu-{id}"))
                    .spawn(move || worker(&s, id))
                    .expect("spawn a worker thread")
            })
            .collect();
        Pool {
            shared,
            workers,
            caller: Mutex::new(()),
        }
    }

    /// Members in all, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(member)` on every member (0 is the calling thread) and returns
    /// when all have finished.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() {
            f(0);
            return;
        }
        let _one = self.caller.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: the lifetime is erased only for the duration of this call: we
        // wait below until no worker still runs `f`.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
        unsafe { *s.job.get() = Some(job) };
        s.pending.store(self.workers.len(), Ordering::SeqCst);
        s.generation.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(0)));
        let start = Instant::now();
        let mut spins = 0u32;
        while s.pending.load(Ordering::Acquire) > 0 {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) && start.elapsed() > CALLER_SPIN {
                // A worker the OS descheduled mid-item: sleep until it is done.
                s.caller_waiting.store(true, Ordering::SeqCst);
                let mut g = s.done_lock.lock().unwrap_or_else(|e| e.into_inner());
                while s.pending.load(Ordering::SeqCst) > 0 {
                    g = s
                        .done
                        .wait_timeout(g, Duration::from_millis(1))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                drop(g);
                s.caller_waiting.store(false, Ordering::SeqCst);
                break;
            }
            std::hint::spin_loop();
        }
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::SeqCst) {
            panic!("a quern-cpu worker thread panicked");
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let s = &*self.shared;
        s.stop.store(true, Ordering::SeqCst);
        s.generation.fetch_add(1, Ordering::SeqCst);
        {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn worker(s: &Shared, id: usize) {
    let mut seen = 0u64;
    loop {
        // Wait for a new generation: spin, then park.
        let start = Instant::now();
        let mut spins = 0u32;
        let current = loop {
            let g = s.generation.load(Ordering::Acquire);
            if g != seen {
                break g;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(256) || start.elapsed() < SPIN {
                std::hint::spin_loop();
            } else {
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                let mut guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                while s.generation.load(Ordering::SeqCst) == seen {
                    guard = s.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                }
                drop(guard);
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
        };
        seen = current;
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        // SAFETY: published before `generation`; valid until we decrement `pending`.
        let job = unsafe { *s.job.get() };
        if let Some(job) = job {
            let f = unsafe { &*job };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(id))).is_err() {
                s.panicked.store(true, Ordering::SeqCst);
            }
        }
        if s.pending.fetch_sub(1, Ordering::SeqCst) == 1 && s.caller_waiting.load(Ordering::SeqCst)
        {
            let _g = s.done_lock.lock().unwrap_or_else(|e| e.into_inner());
            s.done.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_member_runs_every_job() {
        for threads in [1, 2, 3] {
            let pool = Pool::new(threads);
            assert_eq!(pool.threads(), threads);
            for round in 0..200usize {
                let hits: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
                pool.run(&|m| {
                    hits[m].fetch_add(round + 1, Ordering::Relaxed);
                });
                for h in &hits {
                    assert_eq!(h.load(Ordering::Relaxed), round + 1);
                }
            }
        }
    }

    #[test]
    fn parked_workers_wake_up() {
        let pool = Pool::new(2);
        std::thread::sleep(SPIN * 10);
        let n = AtomicUsize::new(0);
        pool.run(&|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_panicking_job_is_reported_to_the_caller() {
        let pool = Pool::new(2);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(&|m| {
                if m == 1 {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        // And the pool still works.
        let n = AtomicUsize::new(0);
        pool.run(&|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 2);
    }
}
