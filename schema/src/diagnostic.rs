//! Diagnostics: one problem in one file, with its position and field path.

use std::fmt;

use serde::Serialize;

/// One validation problem, located in a file of the state repo.
///
/// `line` and `column` are 1-based; `0` means the problem concerns the file as a whole (an empty
/// file, a missing file). `path` is the field path inside the document (`spec.aws.accountId`,
/// `spec.stacks[1].name`), empty when the problem is not about one field.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
pub struct Diagnostic {
    /// File, relative to the repo root, with `/` separators.
    pub file: String,
    /// 1-based line; 0 when the whole file is concerned.
    pub line: usize,
    /// 1-based column; 0 when the whole file is concerned.
    pub column: usize,
    /// The message, prefixed by the field path when there is one (`spec.region: ...`).
    pub message: String,
    /// Field path inside the document, e.g. `spec.stacks[0].name`.
    pub path: String,
}

impl Diagnostic {
    /// A diagnostic at a position, about a field.
    pub fn new(file: &str, pos: Pos, path: &str, text: impl fmt::Display) -> Self {
        let message = if path.is_empty() {
            text.to_string()
        } else {
            format!("{path}: {text}")
        };
        Self {
            file: file.to_owned(),
            line: pos.line,
            column: pos.column,
            message,
            path: path.to_owned(),
        }
    }

    /// A diagnostic about a whole file.
    pub fn file(file: &str, text: impl fmt::Display) -> Self {
        Self::new(file, Pos::default(), "", text)
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

/// A 1-based line and column; `Pos::default()` (0:0) stands for "the whole file".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl Pos {
    /// The start of a file.
    pub const START: Pos = Pos { line: 1, column: 1 };
}

/// Sorts diagnostics by file and position and drops exact duplicates, so output is stable.
pub fn sort_dedup(diags: &mut Vec<Diagnostic>) {
    diags.sort();
    diags.dedup();
}
