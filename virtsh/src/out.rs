//! Output as virsh prints it: tables in virsh's vshTable layout, `Label:  value` info
//! blocks, and the same data as JSON under `--json`. Everything goes through [`Out`], so
//! a closed pipe (`virtsh list | head -1`) is an error to stop on, never a panic.

use std::io::{self, Write as _};

use serde_json::{json, Map, Value};

/// Where a command's output goes and in which form.
#[derive(Clone, Copy)]
pub struct Out {
    pub json: bool,
}

/// Writes a line to stdout; a failed write (a closed pipe) becomes an error.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::out::write_line(&format!($($arg)*))?
    };
}

pub fn write_line(s: &str) -> io::Result<()> {
    let mut o = io::stdout().lock();
    o.write_all(s.as_bytes())?;
    o.write_all(b"\n")?;
    o.flush()
}

/// Writes text as it is (XML documents), ending it with a newline if it has none.
pub fn write_text(s: &str) -> io::Result<()> {
    write_line(s.strip_suffix('\n').unwrap_or(s))
}

impl Out {
    /// A table: virsh's layout (` Col   Col` header, a dash rule, rows), or under
    /// `--json` an array of objects keyed by the lower-cased column names.
    pub fn table(&self, headers: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
        if self.json {
            let keys: Vec<String> = headers.iter().map(|h| key(h)).collect();
            let arr: Vec<Value> = rows
                .iter()
                .map(|r| {
                    let m: Map<String, Value> = keys
                        .iter()
                        .zip(r)
                        .map(|(k, v)| (k.clone(), json_scalar(v)))
                        .collect();
                    Value::Object(m)
                })
                .collect();
            return self.value(&Value::Array(arr));
        }
        write_line(render_table(headers, rows).trim_end_matches('\n'))
    }

    /// One value a line (`list --name`), or a JSON array of strings.
    pub fn column(&self, rows: &[Vec<String>]) -> io::Result<()> {
        let vals: Vec<&str> = rows
            .iter()
            .filter_map(|r| r.first().map(String::as_str))
            .collect();
        if self.json {
            return self.value(&json!(vals));
        }
        for v in vals {
            write_line(v)?;
        }
        Ok(())
    }

    /// `Label:         value` lines (virsh's `%-15s %s`), or one JSON object with the
    /// given keys and typed values.
    pub fn info(&self, rows: &[(&str, String, Value)]) -> io::Result<()> {
        self.info_w(15, rows)
    }

    /// [`info`](Self::info) with another label width (nodeinfo's is 20).
    pub fn info_w(&self, width: usize, rows: &[(&str, String, Value)]) -> io::Result<()> {
        if self.json {
            let m: Map<String, Value> = rows
                .iter()
                .map(|(label, _, v)| (key(label), v.clone()))
                .collect();
            return self.value(&Value::Object(m));
        }
        for (label, text, _) in rows {
            write_line(&format!("{:<width$} {text}", format!("{label}:")))?;
        }
        Ok(())
    }

    /// `name value` lines (dommemstat, domblkstat...), or one JSON object.
    pub fn pairs(&self, prefix: &str, rows: &[(String, Value)]) -> io::Result<()> {
        if self.json {
            let m: Map<String, Value> = rows.iter().cloned().collect();
            return self.value(&Value::Object(m));
        }
        for (k, v) in rows {
            let v = match v {
                Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            write_line(&format!("{prefix}{k} {v}"))?;
        }
        Ok(())
    }

    /// A single value: plain text, or a JSON string/number.
    pub fn scalar(&self, text: &str, value: Value) -> io::Result<()> {
        if self.json {
            return self.value(&value);
        }
        write_line(text)
    }

    pub fn value(&self, v: &Value) -> io::Result<()> {
        write_line(&serde_json::to_string_pretty(v).unwrap_or_else(|_| "null".into()))
    }
}

/// virsh's vshTable: every cell after one space, columns padded to their widest cell
/// plus two spaces, the last one unpadded, and a rule as wide as the columns plus three
/// each.
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let cells: Vec<&str> = cells.collect();
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            s.push(' ');
            s.push_str(c);
            if i + 1 < cells.len() {
                let pad = widths
                    .get(i)
                    .map_or(0, |w| w.saturating_sub(c.chars().count()))
                    + 2;
                s.push_str(&" ".repeat(pad));
            }
        }
        s.push('\n');
        s
    };
    let mut s = line(&mut headers.iter().copied());
    s.push_str(&"-".repeat(widths.iter().map(|w| w + 3).sum()));
    s.push('\n');
    for r in rows {
        s.push_str(&line(&mut r.iter().map(String::as_str)));
    }
    s
}

/// A JSON key from a virsh label: `Max memory` -> `max_memory`, `CPU(s)` -> `cpus`.
pub fn key(label: &str) -> String {
    let mut k = String::new();
    for c in label.chars() {
        if c.is_ascii_alphanumeric() {
            k.push(c.to_ascii_lowercase());
        } else if (c == ' ' || c == '-' || c == '_') && !k.ends_with('_') {
            k.push('_');
        }
    }
    k.trim_matches('_').to_string()
}

/// Table cells are text; numbers and `-` keep a JSON type where they have one.
fn json_scalar(s: &str) -> Value {
    if let Ok(n) = s.parse::<i64>() {
        return json!(n);
    }
    if s == "-" {
        return Value::Null;
    }
    json!(s)
}

/// virsh's vshPrettyCapacity: a value and its binary unit, printed `%.2f unit`.
pub fn pretty_capacity(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.2} {}", units[u])
}

/// A size as virsh's scaled integers take it: a number with an optional suffix, `k`/`KiB`
/// for 1024, `KB` for 1000, and so on up to `E`; no suffix is bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let suffix = suffix.trim();
    let mut chars = suffix.chars();
    let (letter, rest) = match chars.next() {
        None => return Some(n),
        Some(c) => (c.to_ascii_lowercase(), chars.as_str()),
    };
    let base: u64 = match rest {
        "" | "iB" | "ib" => 1024,
        "B" | "b" if letter != 'b' => 1000,
        _ => return None,
    };
    let exp = match letter {
        'b' if rest.is_empty() => 0,
        'k' => 1,
        'm' => 2,
        'g' => 3,
        't' => 4,
        'p' => 5,
        'e' => 6,
        _ => return None,
    };
    n.checked_mul(base.checked_pow(exp)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_virsh_layout() {
        // A row longer than the header is printed, not a panic.
        let t = render_table(&["A"], &[vec!["x".into(), "yy".into()]]);
        assert_eq!(t, " A\n----\n x   yy\n");
        let t = render_table(
            &["Id", "Name", "State"],
            &[vec!["1".into(), "demo".into(), "running".into()]],
        );
        assert_eq!(
            t,
            " Id   Name   State\n----------------------\n 1    demo   running\n"
        );
    }

    #[test]
    fn sizes_and_capacities() {
        assert_eq!(parse_size("10"), Some(10));
        assert_eq!(parse_size("1M"), Some(1 << 20));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("1KB"), Some(1000));
        assert_eq!(parse_size("1x"), None);
        assert_eq!(parse_size("1é"), None);
        assert_eq!(parse_size("1kéB"), None);
        assert_eq!(parse_size("99999999999999999999"), None);
        assert_eq!(parse_size("20E"), None);
        assert_eq!(pretty_capacity(1 << 30), "1.00 GiB");
        assert_eq!(pretty_capacity(512), "512.00 B");
        assert_eq!(key("Max memory"), "max_memory");
        assert_eq!(key("CPU(s)"), "cpus");
    }
}
