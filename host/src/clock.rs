//! Time behind a trait, so that logic which depends on it (backoff, due times) is tested without
//! sleeping; and the CPU clocks that say what a piece of work cost (the open and store counters).

/// A source of wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        crate::store::now_ms()
    }
}

/// CPU time this thread has used so far (zero where the platform does not say): what a piece of
/// work cost, whatever else ran on the cores meanwhile.
pub fn thread_cpu() -> std::time::Duration {
    cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time this process has used so far, all threads (zero where the platform does not say).
pub fn process_cpu() -> std::time::Duration {
    cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn cpu_clock(clock: libc::clockid_t) -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for clock_gettime to write, and lives across the call.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_grows_with_work_and_not_with_sleep() {
        let before = thread_cpu();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let slept = thread_cpu() - before;
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let worked = thread_cpu() - before - slept;
        assert!(slept < std::time::Duration::from_millis(20), "{slept:?}");
        assert!(worked >= std::time::Duration::from_millis(25), "{worked:?}");
        assert!(process_cpu() >= worked);
    }
}
