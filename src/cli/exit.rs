//! hakim's exit statuses, as documented in the README.

use std::process::ExitCode;

/// The status hakim exits with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u8);

impl Status {
    /// Everything asked for was done.
    pub const SUCCESS: Status = Status(0);
    /// A build, push, export, test or other command failed.
    pub const FAILURE: Status = Status(1);
    /// The command line was wrong (clap exits with this code itself).
    pub const USAGE: Status = Status(2);
    /// `hakim run`: hakim or the sandbox failed before the command ran (docker run's 125).
    pub const RUN_FAILED: Status = Status(125);
    /// `hakim run`: the command exists but cannot be executed (docker run's 126).
    pub const RUN_CANNOT_EXECUTE: Status = Status(126);
    /// `hakim run`: the command was not found in the image (docker run's 127).
    pub const RUN_NOT_FOUND: Status = Status(127);

    /// The status for a child's exit code, clamped to 0..=255.
    pub fn from_code(code: i32) -> Status {
        Status(code.clamp(0, 255) as u8)
    }
}

impl From<Status> for ExitCode {
    fn from(s: Status) -> ExitCode {
        ExitCode::from(s.0)
    }
}
