//! Source positions of fields, for errors found after parsing (cross references, rules).
//!
//! serde gives positions only for its own errors. For the rest we walk the document's YAML
//! events (yaml-rust2, which does not expand aliases, so a hostile file costs no more than its
//! size) once, lazily, and map every field path to where its value starts.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

use crate::diagnostic::Pos;

/// Field path → position of its value, for one YAML document.
#[derive(Debug, Default)]
pub struct PositionIndex {
    values: HashMap<String, Pos>,
}

impl PositionIndex {
    /// Indexes the first document of `text`. Unparseable text gives an empty index (the typed
    /// parse reports the syntax error itself).
    pub fn build(text: &str) -> Self {
        let mut events = Events::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut events, false).is_err() {
            return Self::default();
        }
        let mut index = Self::default();
        let mut cursor = 0;
        // Skip StreamStart / DocumentStart.
        while cursor < events.0.len()
            && matches!(
                events.0[cursor].0,
                Event::StreamStart | Event::DocumentStart
            )
        {
            cursor += 1;
        }
        index.walk(&events.0, &mut cursor, String::new());
        index
    }

    /// Position of the value at `path` or, when it is absent, of its closest present ancestor.
    pub fn locate(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some(pos) = self.values.get(p) {
                return *pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => return self.values.get("").copied().unwrap_or(Pos::START),
            }
        }
    }

    fn walk(&mut self, events: &[(Event, Marker)], cursor: &mut usize, path: String) {
        let Some((event, mark)) = events.get(*cursor) else {
            return;
        };
        self.values.insert(path.clone(), pos(mark));
        *cursor += 1;
        match event {
            Event::MappingStart(..) => loop {
                match events.get(*cursor) {
                    None => return,
                    Some((Event::MappingEnd, _)) => {
                        *cursor += 1;
                        return;
                    }
                    Some((Event::Scalar(key, ..), _)) => {
                        let child = if path.is_empty() {
                            key.clone()
                        } else {
                            format!("{path}.{key}")
                        };
                        *cursor += 1;
                        self.walk(events, cursor, child);
                    }
                    Some(_) => {
                        // A complex key: skip it, then its value, under a throwaway path.
                        self.walk(events, cursor, format!("{path}.?"));
                        self.walk(events, cursor, format!("{path}.?"));
                    }
                }
            },
            Event::SequenceStart(..) => {
                let mut i = 0;
                loop {
                    match events.get(*cursor) {
                        None => return,
                        Some((Event::SequenceEnd, _)) => {
                            *cursor += 1;
                            return;
                        }
                        Some(_) => {
                            self.walk(events, cursor, format!("{path}[{i}]"));
                            i += 1;
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

fn pos(mark: &Marker) -> Pos {
    Pos {
        line: mark.line(),
        column: mark.col() + 1,
    }
}

#[derive(Default)]
struct Events(Vec<(Event, Marker)>);

impl MarkedEventReceiver for Events {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        self.0.push((ev, mark));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_nested_fields_and_list_items() {
        let text =
            "a: 1\nspec:\n  region: sgp-1\n  stacks:\n    - name: trino\n      values: {x: 1}\n";
        let index = PositionIndex::build(text);
        assert_eq!(index.locate("a"), Pos { line: 1, column: 4 });
        assert_eq!(
            index.locate("spec.region"),
            Pos {
                line: 3,
                column: 11
            }
        );
        assert_eq!(
            index.locate("spec.stacks[0].name"),
            Pos {
                line: 5,
                column: 13
            }
        );
        assert_eq!(
            index.locate("spec.stacks[0].values.x"),
            Pos {
                line: 6,
                column: 19
            }
        );
        // Absent fields fall back to the closest ancestor.
        assert_eq!(
            index.locate("spec.stacks[0].missing"),
            index.locate("spec.stacks[0]")
        );
    }
}
