//! Parsing a tenant document once for every workspace id: the generalized form, its
//! soundness argument, and the off switch.

/// The placeholder character: a letter no YAML null, boolean or number contains.
pub(super) const PLACEHOLDER: char = 'Z';

/// Generalizes rendered documents for one workspace id: the id replaced by a placeholder of the
/// same length made of [`PLACEHOLDER`] characters (`acme` → `ZZZZ`, so `bff.w-acme.sgp-1.cogrion.com` →
/// `bff.w-ZZZZ.sgp-1.cogrion.com`).
///
/// Guarantee: when [`Generalizer::of`] gives `text` and [`Generalizer::specialize`] succeeds,
/// `specialize(parse(text)) == parse(doc)`. Why this holds:
/// - The id is a DNS label (`[a-z0-9-]`, no leading or trailing `-`); the placeholder has its
///   length, so lines, columns and YAML's 1024-character limit on simple keys are unchanged.
///   Letters, digits and an inner `-` mean the same to YAML's scanner, so both texts tokenize
///   alike, except where YAML reads letters or digits as syntax. In a tag (`!!str`) or a
///   directive (`%TAG`) a renamed id could change a value's type: documents with the id there
///   are not generalized ([`in_tag_or_directive`]). In a block scalar header (`|2`) or an
///   escape (`\n`) the placeholder is invalid (no indentation indicator or escape contains a
///   `Z`), so the generalized text fails to parse and the document is parsed as it is.
/// - `doc` contains no `Z` at all (checked), so every `Z` of `text` comes from a replaced id:
///   the placeholder occurs exactly where the id was, and anchor names stay distinct.
/// - A string's value is its text up to whitespace folding and escapes. The id contains no
///   whitespace, and documents with an escape that spells a `Z` (`\x5a`, `\u005A`, ...) are
///   not generalized: every `Z` of a parsed value is a placeholder.
/// - A plain scalar containing `Z` is always a string (no null, boolean or number contains a
///   `Z`), but the same scalar with the id back might not be (`1234`, `0xdead`). So
///   [`Generalizer::specialize`] refuses any specialized string that YAML could read as
///   something else ([`could_be_non_string`]), and the document is parsed as it is.
pub(super) struct Generalizer<'a> {
    pub(super) id: &'a str,
    pub(super) placeholder: String,
    pub(super) finder: memchr::memmem::Finder<'a>,
}

impl<'a> Generalizer<'a> {
    /// `None` when `id` is not a DNS label (then nothing is generalized). The searches are
    /// prepared once, for every document of a cluster.
    pub(super) fn new(id: &'a str) -> Option<Self> {
        cplane_schema::domain::is_dns_label(id).then(|| Self {
            id,
            placeholder: PLACEHOLDER.to_string().repeat(id.len()),
            finder: memchr::memmem::Finder::new(id),
        })
    }

    /// Where the id occurs in `doc` (byte offsets, not overlapping), or `None` when the
    /// guarantee could not be given.
    pub(super) fn occurrences(&self, doc: &str) -> Option<Vec<usize>> {
        if memchr::memchr(PLACEHOLDER as u8, doc.as_bytes()).is_some() || escapes_placeholder(doc) {
            return None;
        }
        let mut at = Vec::new();
        for found in self.finder.find_iter(doc.as_bytes()) {
            if in_tag_or_directive(doc, found) {
                return None;
            }
            at.push(found);
        }
        Some(at)
    }

    /// `doc` with the placeholder at `at` (from [`Generalizer::occurrences`]).
    pub(super) fn generalize(&self, doc: &str, at: &[usize]) -> String {
        let mut text = String::with_capacity(doc.len());
        let mut copied = 0;
        for &found in at {
            text.push_str(&doc[copied..found]);
            text.push_str(&self.placeholder);
            copied = found + self.id.len();
        }
        text.push_str(&doc[copied..]);
        text
    }

    /// `doc` generalized, or `None` when the guarantee could not be given. A document that
    /// does not mention the id is its own generalization.
    pub(super) fn of<'d>(&self, doc: &'d str) -> Option<std::borrow::Cow<'d, str>> {
        let at = self.occurrences(doc)?;
        Some(if at.is_empty() {
            doc.into()
        } else {
            self.generalize(doc, &at).into()
        })
    }

    /// The value parsed from the generalized text with the id put back, or `None` when a
    /// string with the id back could be read by YAML as a null, boolean or number.
    pub(super) fn specialize(&self, value: &serde_json::Value) -> Option<serde_json::Value> {
        use serde_json::Value as V;
        let put_back = |s: &str| {
            if !s.contains(PLACEHOLDER) {
                return Some(s.to_owned());
            }
            let back = s.replace(&self.placeholder, self.id);
            (!could_be_non_string(&back)).then_some(back)
        };
        Some(match value {
            V::String(s) => V::String(put_back(s)?),
            V::Array(items) => V::Array(
                items
                    .iter()
                    .map(|v| self.specialize(v))
                    .collect::<Option<_>>()?,
            ),
            V::Object(map) => V::Object(
                map.iter()
                    .map(|(k, v)| Some((put_back(k)?, self.specialize(v)?)))
                    .collect::<Option<_>>()?,
            ),
            other => other.clone(),
        })
    }
}

/// Whether `doc` has a `\x`, `\u` or `\U` escape that spells the placeholder character (looked
/// for everywhere, not only in double-quoted scalars: a false alarm only costs a parse).
pub(super) fn escapes_placeholder(doc: &str) -> bool {
    let bytes = doc.as_bytes();
    memchr::memchr_iter(b'\\', bytes).any(|i| {
        let digits = match bytes.get(i + 1) {
            Some(b'x') => 2,
            Some(b'u') => 4,
            Some(b'U') => 8,
            _ => return false,
        };
        doc.get(i + 2..i + 2 + digits)
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
            == Some(u32::from(PLACEHOLDER))
    })
}

/// Whether the id found at byte `at` of `doc` is inside a tag (`!!str`, `!acme`,
/// `!<tag:...>`) or on a directive line (`%TAG`), where renaming it would change how YAML types
/// a value rather than the value's text. Conservative: a `!` anywhere earlier in the same run of
/// non-blank characters counts (a verbatim tag `!<tag:yaml.org,2002:int>` has no blanks, but
/// may have `,`).
pub(super) fn in_tag_or_directive(doc: &str, at: usize) -> bool {
    let before = &doc.as_bytes()[..at];
    let token = before.iter().rev().take_while(|b| !b.is_ascii_whitespace());
    let line_start = memchr::memrchr(b'\n', before).map_or(0, |i| i + 1);
    token.clone().any(|&b| b == b'!') || before.get(line_start) == Some(&b'%')
}

/// Whether YAML could read `s`, as a plain scalar, as anything but a string. Conservative: true
/// unless `s` has a character that no null (`~`, `null`), boolean (`true`, `yes`, `on`, ...) or
/// number (`0x1f`, `-1.5e3`, `.inf`, `NaN`, `1_000`, `1:30`) can contain.
pub(super) fn could_be_non_string(s: &str) -> bool {
    s.chars().all(|c| {
        c.is_ascii_digit()
            || "+-._:~".contains(c)
            || "abcdefilnorstuxy".contains(c.to_ascii_lowercase())
    })
}

/// Placeholder letters of [`Tokens`]: `Z` ([`PLACEHOLDER`]) for the workspace id, the others
/// for further values, each given to the next token found in a document that lacks it. None is
/// a hex digit, an escape letter (`\N`, `\L`, `\P`, ...) or a letter of any YAML null, boolean
/// or number, so the arguments on [`Generalizer`] hold for each of them.
pub(super) const LETTERS: [u8; 9] = *b"ZJQVWKHGM";

/// The longest token [`Tokens`] generalizes (a DNS label's limit).
const LONGEST: usize = 63;

/// Runs of each of [`LETTERS`], [`LONGEST`] long: the placeholders are their prefixes.
static RUNS: std::sync::LazyLock<[String; LETTERS.len()]> = std::sync::LazyLock::new(|| {
    LETTERS.map(|letter| char::from(letter).to_string().repeat(LONGEST))
});

/// The placeholder of a token `len` long written with `LETTERS[slot]`.
pub(super) fn placeholder(slot: usize, len: usize) -> &'static str {
    &RUNS[slot][..len]
}

/// Generalizes documents over several values of one cluster at once, for the canonical-line
/// route ([`super::LineCache`]): the workspace id (token 0, always written with `Z`) and values
/// that differ between workspaces (the AWS account id, a stack's values), so that a document
/// differing from another only in those values is parsed once.
///
/// Guarantee: the [`Generalizer`]'s, for every token at once. Why it carries over:
/// - A token is letters, digits and inner `-` ([`is_token`]), as an id is, and each is
///   replaced by a run of one letter of its own length: the scanner sees the same tokens.
/// - A token's letter is one the document does not contain, as a character or spelled by an
///   escape (checked per document), and each letter stands for one token in a document: every
///   run of a letter in the parsed value is that token, once or several times over (the same
///   token found twice in a row), and nothing else. Occurrences of different tokens never
///   overlap (a later token's occurrences that would are left as they are).
/// - Which letter stands for which token is part of [`Generalized`], and so of every cache key
///   made from it: two documents share a generalized text only when they also share the letters.
/// - Occurrences in a tag or directive: the id's refuse the document; another token's are left
///   as they are (that token is not generalized in the document).
/// - Typing: a string holding a placeholder is a string; with the tokens back it might not be.
///   [`super::canonical_line`] records, for each string whose other characters are all ones a
///   number or a YAML word could be made of, which tokens it holds; the line is refused for a
///   cluster whose tokens there are all [`could_be_non_string`].
pub(super) struct Tokens<'a> {
    /// Token 0 is the workspace id, then the others in priority order.
    pub(super) texts: Vec<&'a str>,
    finders: Vec<memchr::memmem::Finder<'a>>,
}

/// One occurrence of a token in a document.
#[derive(Debug, Clone, Copy)]
pub(super) struct Occurrence {
    /// Byte offset.
    pub(super) at: usize,
    /// The token's length.
    pub(super) len: usize,
    /// Index into [`LETTERS`] of the letter that stands for it.
    pub(super) slot: usize,
}

/// Where a document's tokens are and which letter stands for each.
#[derive(Debug, Clone)]
pub(super) struct Generalized {
    /// Occurrences, by offset.
    pub(super) occurrences: Vec<Occurrence>,
    /// Per token (by index into [`Tokens::texts`]): the index into [`LETTERS`] of its letter
    /// plus one, or 0 when the token is not generalized in this document. The id's is always 1
    /// (`Z`): the cluster label holds it.
    pub(super) slots: [u8; LETTERS.len()],
}

impl Generalized {
    /// Per letter (index into [`LETTERS`]): the token it stands for, if any.
    pub(super) fn tokens_by_slot(&self) -> [Option<usize>; LETTERS.len()] {
        let mut by_slot = [None; LETTERS.len()];
        for (token, &slot) in self.slots.iter().enumerate() {
            if slot > 0 {
                by_slot[usize::from(slot) - 1] = Some(token);
            }
        }
        by_slot
    }
}

/// Whether `s` can be generalized as a token other than the id: 4 to [`LONGEST`] letters, digits
/// and inner `-`, and not a YAML word (`true`, `null`, `dead`...) that would rather be refused
/// wherever it stands alone. All digits is fine: those are the values that differ most.
pub(super) fn is_token(s: &str) -> bool {
    let b = s.as_bytes();
    (4..=LONGEST).contains(&b.len())
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && (b.iter().all(u8::is_ascii_digit) || !could_be_non_string(s))
}

impl<'a> Tokens<'a> {
    /// The tokens of one cluster: `id` (which must be a DNS label, or `None`), then those of
    /// `others` that are [`is_token`], without repeats, as many as there are letters.
    pub(super) fn new(id: &'a str, others: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        if !cplane_schema::domain::is_dns_label(id) {
            return None;
        }
        let mut texts = vec![id];
        for t in others {
            if texts.len() == LETTERS.len() {
                break;
            }
            if is_token(t) && !texts.contains(&t) {
                texts.push(t);
            }
        }
        let finders = texts
            .iter()
            .map(|t| memchr::memmem::Finder::new(t.as_bytes()))
            .collect();
        Some(Self { texts, finders })
    }

    /// Where the tokens are in `doc`, or `None` when not even the id can be generalized there
    /// (see [`Generalizer::occurrences`]).
    pub(super) fn generalize(&self, doc: &str) -> Option<Generalized> {
        let bytes = doc.as_bytes();
        let escaped = escaped_letters(doc);
        let absent = |letter: u8| {
            memchr::memchr(letter, bytes).is_none() && escaped & (1 << (letter - b'A')) == 0
        };
        if !absent(LETTERS[0]) {
            return None;
        }
        let mut occurrences = Vec::new();
        let id_len = self.texts[0].len();
        for at in self.finders[0].find_iter(bytes) {
            if in_tag_or_directive(doc, at) {
                return None;
            }
            occurrences.push(Occurrence {
                at,
                len: id_len,
                slot: 0,
            });
        }
        let mut slots = [0; LETTERS.len()];
        slots[0] = 1;
        // A letter is looked for only once a token is found: most documents hold none.
        let mut free = (1..LETTERS.len()).filter(|&slot| absent(LETTERS[slot]));
        for (token, finder) in self.finders.iter().enumerate().skip(1) {
            let len = self.texts[token].len();
            let before = occurrences.len();
            for at in finder.find_iter(bytes) {
                let overlaps = occurrences[..before]
                    .iter()
                    .any(|o: &Occurrence| at < o.at + o.len && o.at < at + len);
                if !overlaps {
                    occurrences.push(Occurrence { at, len, slot: 0 });
                }
            }
            let found = &occurrences[before..];
            if found.is_empty() {
                continue;
            }
            let slot = match found.iter().any(|o| in_tag_or_directive(doc, o.at)) {
                false => free.next(),
                true => None,
            };
            let Some(slot) = slot else {
                occurrences.truncate(before);
                continue;
            };
            occurrences[before..].iter_mut().for_each(|o| o.slot = slot);
            slots[token] = u8::try_from(slot + 1).expect("fewer than 256 letters");
        }
        occurrences.sort_unstable_by_key(|o| o.at);
        Some(Generalized { occurrences, slots })
    }

    /// `s` (a string of a value parsed from generalized text) with the tokens back, or `None`
    /// when a run of a letter is not a whole number of its token.
    pub(super) fn put_back(&self, s: &str, g: &Generalized) -> Option<String> {
        let by_slot = g.tokens_by_slot();
        let mut out = String::with_capacity(s.len() + 16);
        let bytes = s.as_bytes();
        let mut copied = 0;
        let mut i = 0;
        while i < bytes.len() {
            let Some(token) = slot_of(bytes[i]).and_then(|slot| by_slot[slot]) else {
                i += 1;
                continue;
            };
            let run = bytes[i..].iter().take_while(|&&b| b == bytes[i]).count();
            let text = self.texts[token];
            if run % text.len() != 0 {
                return None;
            }
            out.push_str(&s[copied..i]);
            for _ in 0..run / text.len() {
                out.push_str(text);
            }
            i += run;
            copied = i;
        }
        out.push_str(&s[copied..]);
        Some(out)
    }
}

/// The index into [`LETTERS`] of `b`, if it is one.
pub(super) fn slot_of(b: u8) -> Option<usize> {
    LETTERS.iter().position(|&l| l == b)
}

/// The letters `A`-`Z` that a `\x`, `\u` or `\U` escape of `doc` spells, as a bit set (bit 0
/// for `A`). Looked for everywhere, not only in double-quoted scalars: a false alarm only costs
/// a letter.
pub(super) fn escaped_letters(doc: &str) -> u32 {
    let bytes = doc.as_bytes();
    let mut set = 0;
    for i in memchr::memchr_iter(b'\\', bytes) {
        let digits = match bytes.get(i + 1) {
            Some(b'x') => 2,
            Some(b'u') => 4,
            Some(b'U') => 8,
            _ => continue,
        };
        if let Some(c) = doc
            .get(i + 2..i + 2 + digits)
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
            .filter(|c| (u32::from(b'A')..=u32::from(b'Z')).contains(c))
        {
            set |= 1 << (c - u32::from(b'A'));
        }
    }
    set
}
