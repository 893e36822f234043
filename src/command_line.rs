//! The passwords of `--user NAME:PASSWORD` blanked from the process's command line once it is
//! parsed: `/proc/PID/cmdline` (what `ps` shows every local user) reads the process's own
//! argv strings, so overwriting them in place hides the passwords, as MySQL's client does. A
//! `ps` in the first moments of the process can still see them; `--users-file` and
//! `VELOCITY_USERS` never put them there.

use std::ffi::{CStr, c_char, c_int};
use std::sync::atomic::{AtomicIsize, AtomicPtr, Ordering};

static ARGC: AtomicIsize = AtomicIsize::new(0);
static ARGV: AtomicPtr<*mut c_char> = AtomicPtr::new(std::ptr::null_mut());

/// glibc calls `.init_array` functions with the real argc and argv before `main` (std reads
/// its arguments the same way).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[used]
#[unsafe(link_section = ".init_array")]
static CAPTURE_ARGV: extern "C" fn(c_int, *mut *mut c_char, *mut *mut c_char) = capture_argv;

extern "C" fn capture_argv(argc: c_int, argv: *mut *mut c_char, _env: *mut *mut c_char) {
    ARGC.store(argc as isize, Ordering::Relaxed);
    ARGV.store(argv, Ordering::Relaxed);
}

/// Overwrite with `*` the password part of every `--user NAME:PASSWORD` and
/// `--user=NAME:PASSWORD` argument.
pub fn hide_passwords() {
    let argv = ARGV.load(Ordering::Relaxed);
    if argv.is_null() {
        return;
    }
    let mut value_of_user = false;
    for i in 0..ARGC.load(Ordering::Relaxed).max(0) as usize {
        // SAFETY: argv holds argc valid, NUL-terminated strings that the process owns for
        // its whole life (glibc's promise to init_array functions); the loop writes only
        // inside each string, before its NUL, and runs before any thread reads them.
        unsafe {
            let arg = *argv.add(i);
            if arg.is_null() {
                break;
            }
            let bytes = CStr::from_ptr(arg).to_bytes();
            let value_at = if value_of_user { Some(0) } else { bytes.starts_with(b"--user=").then_some(7) };
            value_of_user = bytes == b"--user";
            let Some(value_at) = value_at else { continue };
            if let Some(colon) = bytes[value_at..].iter().position(|&b| b == b':') {
                for j in value_at + colon + 1..bytes.len() {
                    *arg.add(j) = b'*' as c_char;
                }
            }
        }
    }
}
