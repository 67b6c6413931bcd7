//! Spec errors: every one names the file and, where known, line:col and the field.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where in a YAML file something was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourcePos {
    /// The file.
    pub file: PathBuf,
    /// 1-based line, 0 when unknown.
    pub line: u64,
    /// 1-based column, 0 when unknown.
    pub col: u64,
}

impl SourcePos {
    /// A position from a saphyr location.
    pub fn at(file: &Path, loc: serde_saphyr::Location) -> Self {
        Self {
            file: file.to_path_buf(),
            line: loc.line(),
            col: loc.column(),
        }
    }

    /// A whole-file position.
    pub fn file(file: &Path) -> Self {
        Self {
            file: file.to_path_buf(),
            line: 0,
            col: 0,
        }
    }
}

impl fmt::Display for SourcePos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.col)?;
        }
        Ok(())
    }
}

/// A problem with variant or layer files.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// YAML syntax, unknown key or wrong type, as reported by the parser.
    #[error("{pos}: {message}")]
    Parse { pos: SourcePos, message: String },
    /// A value that parsed but is not acceptable.
    #[error("{pos}: field `{field}`: {message}")]
    Invalid {
        pos: SourcePos,
        field: String,
        message: String,
    },
    /// No project directory (holding `variants/`) was found.
    #[error(
        "no hakim project found: no `variants/` directory in {0} or any parent (use --project DIR)"
    )]
    NoProject(PathBuf),
    /// A variant named on the command line does not exist.
    #[error("unknown variant `{name}` (known: {known})")]
    UnknownVariant { name: String, known: String },
}

impl SpecError {
    /// A validation error at a position.
    pub fn invalid(pos: SourcePos, field: &str, message: impl Into<String>) -> Self {
        Self::Invalid {
            pos,
            field: field.to_string(),
            message: message.into(),
        }
    }
}
