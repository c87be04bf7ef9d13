//! Process spawning details shared by berthd and berth-shim.

/// The kernel's `struct sigaction` (x86-64 and arm64 layout: both have `sa_restorer`).
#[repr(C)]
#[derive(Default)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// Restores the default action of every ignored signal, for a child between fork and exec, so
/// neither the OCI runtime nor the container's processes inherit an ignored disposition (it
/// survives exec; std's `Command` resets only SIGPIPE and the mask). This matters in practice:
/// glibc's posix_spawn marks its internal signal 32 ignored in the child, so everything berthd
/// spawns would pass it on to the container's processes.
///
/// Async-signal-safe: raw syscalls only, no allocation, no libc signal wrappers (they refuse
/// the signals libc reserves for itself, musl 32-34, which are exactly the ones to repair).
pub fn reset_ignored_signals() {
    /// `_NSIG - 1` on Linux; a constant, since `SIGRTMAX()` is a libc call.
    const LAST_SIGNAL: i32 = 64;
    const SIGSET_SIZE: usize = 8;
    for signal in 1..=LAST_SIGNAL {
        if matches!(signal, libc::SIGKILL | libc::SIGSTOP) {
            continue;
        }
        let mut old = KernelSigaction::default();
        // SAFETY: rt_sigaction with no new action only fills `old`, a valid object of the
        // kernel's layout and size.
        let got = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                std::ptr::null::<KernelSigaction>(),
                &mut old as *mut KernelSigaction,
                SIGSET_SIZE,
            )
        };
        if got != 0 || old.handler != libc::SIG_IGN {
            continue;
        }
        let default = KernelSigaction {
            handler: libc::SIG_DFL,
            ..KernelSigaction::default()
        };
        // SAFETY: installs SIG_DFL (no handler code, so no restorer is needed) from a valid
        // object of the kernel's layout; the old action is not asked for. A failure leaves the
        // signal as it was, which is all that could be done about it here.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                &default as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                SIGSET_SIZE,
            );
        }
    }
}
