//! Maps key paths (`listeners.inbound.routes[0].upstream`) to 1-based lines of the YAML text, so
//! semantic errors found after deserializing can point at the line to edit. Built from the YAML
//! event stream, which carries a position for every key and value.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Key path -> line.
#[derive(Debug, Default)]
pub(crate) struct Lines {
    map: HashMap<String, usize>,
}

enum Frame {
    /// In a mapping: the path of the mapping and the pending key (None when expecting a key).
    Map { path: String, key: Option<String> },
    /// In a sequence: the path and the next index.
    Seq { path: String, next: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    map: HashMap<String, usize>,
}

impl Lines {
    /// Indexes `text`; unparsable text gives an empty index (serde reports the syntax error).
    pub(crate) fn index(text: &str) -> Lines {
        let mut b = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut b, false).is_err() {
            return Lines::default();
        }
        Lines { map: b.map }
    }

    /// Whether `path` itself is in the file.
    pub(crate) fn contains(&self, path: &str) -> bool {
        self.map.contains_key(path)
    }

    /// The line of `path`, or of its nearest ancestor that exists in the file.
    pub(crate) fn line(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.map.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

impl Builder {
    /// Path of the value about to start, consuming the pending key or index.
    fn value_path(&mut self) -> Option<String> {
        match self.stack.last_mut()? {
            Frame::Map { path, key } => key.take().map(|k| join(path, &k)),
            Frame::Seq { path, next } => {
                let p = format!("{path}[{next}]");
                *next += 1;
                Some(p)
            }
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::Scalar(value, ..) => {
                let expecting_key = matches!(self.stack.last(), Some(Frame::Map { key: None, .. }));
                if expecting_key {
                    if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                        // A key given twice maps to its second line: that is the one serde
                        // reports as the duplicate, and the one to remove.
                        self.map.insert(join(path, &value), line);
                        *key = Some(value);
                    }
                } else if let Some(p) = self.value_path() {
                    self.map.entry(p).or_insert(line);
                }
            }
            Event::MappingStart(..) => {
                let path = if self.stack.is_empty() {
                    Some(String::new())
                } else {
                    self.value_path()
                };
                let path = path.unwrap_or_default();
                self.map.entry(path.clone()).or_insert(line);
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.value_path().unwrap_or_default();
                self.map.entry(path.clone()).or_insert(line);
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Alias(..) => {
                let _ = self.value_path();
            }
            _ => {}
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys, nested keys and sequence items get the line they start on.
    #[test]
    fn indexes_paths() {
        let text = "a: 1\nlisteners:\n  inbound:\n    address: x\n    routes:\n      - upstream: app\n      - name: b\n        upstream: c\n";
        let l = Lines::index(text);
        assert_eq!(l.line("a"), Some(1));
        assert_eq!(l.line("listeners.inbound"), Some(3));
        assert_eq!(l.line("listeners.inbound.address"), Some(4));
        assert_eq!(l.line("listeners.inbound.routes[0].upstream"), Some(6));
        assert_eq!(l.line("listeners.inbound.routes[1].upstream"), Some(8));
        // Missing keys fall back to their parent.
        assert_eq!(l.line("listeners.inbound.routes[1].timeout"), Some(7));
    }

    /// A key given twice maps to its second occurrence, the one a duplicate error points at.
    #[test]
    fn duplicate_key_maps_to_second() {
        let l = Lines::index("a:\n  b: 1\n  c: 2\n  b: 3\n");
        assert_eq!(l.line("a.b"), Some(4));
        assert_eq!(l.line("a.c"), Some(3));
    }

    /// Unparsable text gives no lines rather than wrong ones.
    #[test]
    fn syntax_error_gives_nothing() {
        assert_eq!(Lines::index("a: [\n").line("a"), None);
    }
}
