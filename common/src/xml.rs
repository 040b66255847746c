//! Safe XML reading and writing for libvirt's document formats.
//!
//! Documents are read with roxmltree (no DTDs, so no external or recursive entities),
//! bounded in size and depth, into an owned [`Element`] tree that typed parsers walk and
//! that writes back in libvirt's layout (two-space indent, single-quoted attributes).
//! Unknown elements survive a round trip because the tree keeps everything but comments.

use std::fmt::Write as _;

/// The largest document accepted (libvirt's own limit is 10 MiB).
pub const MAX_DOCUMENT_BYTES: usize = 10 * 1024 * 1024;
/// Deeper nesting than this is hostile, not a domain definition.
pub const MAX_DEPTH: usize = 64;
/// Bounds the node count so a flat but huge document cannot exhaust memory.
pub const MAX_NODES: u32 = 500_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    #[error("document is {size} bytes, more than the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("elements nest deeper than {limit} levels")]
    TooDeep { limit: usize },
    #[error("malformed document: {0}")]
    Malformed(String),
    #[error("expected root element <{expected}>, found <{found}>")]
    WrongRoot { expected: String, found: String },
    #[error("missing {what} in <{element}>")]
    Missing { element: String, what: String },
    #[error("invalid value '{value}' for {what} in <{element}>: {reason}")]
    Invalid {
        element: String,
        what: String,
        value: String,
        reason: String,
    },
}

impl XmlError {
    pub fn missing(element: &str, what: &str) -> Self {
        XmlError::Missing {
            element: element.to_owned(),
            what: what.to_owned(),
        }
    }

    pub fn invalid(element: &str, what: &str, value: &str, reason: impl ToString) -> Self {
        XmlError::Invalid {
            element: element.to_owned(),
            what: what.to_owned(),
            value: value.to_owned(),
            reason: reason.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

/// An owned element: the qualified name as written, attributes in document order
/// (namespace declarations included), and children.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Node>,
}

/// Parses a document safely and checks its root element name.
pub fn parse_root(text: &str, root: &str) -> Result<Element, XmlError> {
    let el = parse(text)?;
    if el.name != root {
        return Err(XmlError::WrongRoot {
            expected: root.to_owned(),
            found: el.name,
        });
    }
    Ok(el)
}

/// Parses a document safely into an owned tree.
pub fn parse(text: &str) -> Result<Element, XmlError> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(XmlError::TooLarge {
            size: text.len(),
            limit: MAX_DOCUMENT_BYTES,
        });
    }
    // roxmltree recurses per nesting level: a few thousand nested elements would
    // overflow a worker's stack before any depth check on its tree could run.
    if nests_deeper_than(text.as_bytes(), MAX_DEPTH) {
        return Err(XmlError::TooDeep { limit: MAX_DEPTH });
    }
    let opts = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
    };
    let doc = roxmltree::Document::parse_with_options(text, opts)
        .map_err(|e| XmlError::Malformed(e.to_string()))?;
    convert(doc.root_element(), 1)
}

/// Whether elements in `text` nest deeper than `limit`, by one pass over the bytes with
/// no recursion. Comments, CDATA, processing instructions and declarations are
/// skipped, quoted attribute values may hold `>`. On malformed input it may count too
/// much or too little; the parser rejects such input anyway, and no count it makes can
/// let a deeper nesting through to the parser.
fn nests_deeper_than(text: &[u8], limit: usize) -> bool {
    let find = |from: usize, pat: &[u8]| -> usize {
        text[from.min(text.len())..]
            .windows(pat.len())
            .position(|w| w == pat)
            .map_or(text.len(), |p| from + p + pat.len())
    };
    let mut depth = 0usize;
    let mut i = 0;
    while i < text.len() {
        if text[i] != b'<' {
            i += 1;
            continue;
        }
        let rest = &text[i..];
        if rest.starts_with(b"<!--") {
            i = find(i + 4, b"-->");
        } else if rest.starts_with(b"<![CDATA[") {
            i = find(i + 9, b"]]>");
        } else if rest.starts_with(b"<?") {
            i = find(i + 2, b"?>");
        } else if rest.starts_with(b"<!") {
            i = find(i + 2, b">");
        } else if rest.starts_with(b"</") {
            depth = depth.saturating_sub(1);
            i = find(i + 2, b">");
        } else {
            // A start tag: to its `>` outside quotes; `/>` closes it at once.
            let mut j = i + 1;
            let mut quote = None;
            while j < text.len() {
                match (quote, text[j]) {
                    (None, b'"' | b'\'') => quote = Some(text[j]),
                    (Some(q), c) if c == q => quote = None,
                    (None, b'>') => break,
                    _ => {}
                }
                j += 1;
            }
            if j >= text.len() || text[j - 1] != b'/' {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            i = j + 1;
        }
    }
    false
}

fn qualified(node: roxmltree::Node, ns: Option<&str>, local: &str) -> String {
    match ns.and_then(|uri| node.lookup_prefix(uri)) {
        Some(prefix) if !prefix.is_empty() => format!("{prefix}:{local}"),
        _ => local.to_owned(),
    }
}

fn convert(node: roxmltree::Node, depth: usize) -> Result<Element, XmlError> {
    if depth > MAX_DEPTH {
        return Err(XmlError::TooDeep { limit: MAX_DEPTH });
    }
    let tag = node.tag_name();
    let mut el = Element {
        name: qualified(node, tag.namespace(), tag.name()),
        ..Element::default()
    };
    // Namespace declarations made on this element (not inherited) stay attributes.
    let parent_ns: Vec<_> = node
        .parent_element()
        .map(|p| p.namespaces().map(|n| (n.name(), n.uri())).collect())
        .unwrap_or_default();
    for ns in node.namespaces() {
        if ns.name() == Some("xml") || parent_ns.contains(&(ns.name(), ns.uri())) {
            continue;
        }
        let key = match ns.name() {
            Some(p) => format!("xmlns:{p}"),
            None => "xmlns".to_owned(),
        };
        el.attrs.push((key, ns.uri().to_owned()));
    }
    for a in node.attributes() {
        el.attrs.push((
            qualified(node, a.namespace(), a.name()),
            a.value().to_owned(),
        ));
    }
    for child in node.children() {
        if child.is_element() {
            el.children.push(Node::Element(convert(child, depth + 1)?));
        } else if child.is_text() {
            let t = child.text().unwrap_or_default();
            if !t.trim().is_empty() {
                el.children.push(Node::Text(t.to_owned()));
            }
        }
    }
    Ok(el)
}

impl Element {
    pub fn new(name: impl Into<String>) -> Self {
        Element {
            name: name.into(),
            ..Element::default()
        }
    }

    /// `<name>text</name>`
    pub fn with_text(name: impl Into<String>, text: impl Into<String>) -> Self {
        let mut el = Element::new(name);
        el.children.push(Node::Text(text.into()));
        el
    }

    /// Builder: adds an attribute.
    pub fn attr(mut self, key: impl Into<String>, value: impl ToString) -> Self {
        self.attrs.push((key.into(), value.to_string()));
        self
    }

    /// Builder: adds an attribute when the value is present.
    pub fn attr_opt<V: ToString>(self, key: impl Into<String>, value: Option<V>) -> Self {
        match value {
            Some(v) => self.attr(key, v),
            None => self,
        }
    }

    /// Builder: adds a child element.
    pub fn child(mut self, child: Element) -> Self {
        self.children.push(Node::Element(child));
        self
    }

    /// Builder: adds a child element when present.
    pub fn child_opt(self, child: Option<Element>) -> Self {
        match child {
            Some(c) => self.child(c),
            None => self,
        }
    }

    pub fn push(&mut self, child: Element) {
        self.children.push(Node::Element(child));
    }

    pub fn get_attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// An attribute that must be there.
    pub fn req_attr(&self, key: &str) -> Result<&str, XmlError> {
        self.get_attr(key)
            .ok_or_else(|| XmlError::missing(&self.name, &format!("attribute '{key}'")))
    }

    /// Parses an optional attribute with `FromStr`, naming the element on failure.
    pub fn parse_attr<T>(&self, key: &str) -> Result<Option<T>, XmlError>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        self.get_attr(key)
            .map(|v| {
                v.trim()
                    .parse::<T>()
                    .map_err(|e| XmlError::invalid(&self.name, &format!("attribute '{key}'"), v, e))
            })
            .transpose()
    }

    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> {
        self.elements().filter(move |e| e.name == name)
    }

    pub fn first(&self, name: &str) -> Option<&Element> {
        self.elements().find(|e| e.name == name)
    }

    /// All direct text, trimmed.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                s.push_str(t);
            }
        }
        s.trim().to_owned()
    }

    /// The trimmed text of a child element, if the child exists.
    pub fn child_text(&self, name: &str) -> Option<String> {
        self.first(name).map(Element::text)
    }

    /// Serialises in libvirt's layout, ending with a newline.
    pub fn to_xml(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0);
        out
    }

    fn write(&self, out: &mut String, depth: usize) {
        let indent = "  ".repeat(depth);
        let _ = write!(out, "{indent}<{}", self.name);
        for (k, v) in &self.attrs {
            let _ = write!(out, " {k}='{}'", escape(v));
        }
        let has_elements = self.children.iter().any(|n| matches!(n, Node::Element(_)));
        if self.children.is_empty() {
            out.push_str("/>\n");
        } else if !has_elements {
            let _ = writeln!(out, ">{}</{}>", escape(&self.text_raw()), self.name);
        } else {
            out.push_str(">\n");
            for n in &self.children {
                match n {
                    Node::Element(e) => e.write(out, depth + 1),
                    Node::Text(t) => {
                        let _ = writeln!(out, "{indent}  {}", escape(t.trim()));
                    }
                }
            }
            let _ = writeln!(out, "{indent}</{}>", self.name);
        }
    }

    fn text_raw(&self) -> String {
        self.children
            .iter()
            .filter_map(|n| match n {
                Node::Text(t) => Some(t.as_str()),
                Node::Element(_) => None,
            })
            .collect()
    }
}

/// Escapes text and attribute values (both quote styles, so either may be used).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_namespaces_and_unknown_elements() {
        let text = "<domain type='kvm'>\n  <name>a&amp;b</name>\n  <metadata>\n    \
                    <lo:libosinfo xmlns:lo='http://libosinfo.org/x'>\n      \
                    <lo:os id='http://debian.org/debian/12'/>\n    </lo:libosinfo>\n  \
                    </metadata>\n  <weird x='1'/>\n</domain>\n";
        let el = parse_root(text, "domain").unwrap();
        assert_eq!(el.child_text("name").as_deref(), Some("a&b"));
        assert_eq!(el.to_xml(), text);
        assert_eq!(parse(&el.to_xml()).unwrap(), el);
    }

    #[test]
    fn rejects_dtd_entities_and_hostile_shapes() {
        let bomb =
            "<?xml version='1.0'?><!DOCTYPE d [<!ENTITY a 'aaaa'><!ENTITY b '&a;&a;'>]><d>&b;</d>";
        assert!(matches!(parse(bomb), Err(XmlError::Malformed(_))));
        let xxe = "<!DOCTYPE d [<!ENTITY x SYSTEM 'file:///etc/passwd'>]><d>&x;</d>";
        assert!(parse(xxe).is_err());
        let deep = "<a>".repeat(MAX_DEPTH + 1) + &"</a>".repeat(MAX_DEPTH + 1);
        assert_eq!(parse(&deep), Err(XmlError::TooDeep { limit: MAX_DEPTH }));
        let just = "<a>".repeat(MAX_DEPTH) + &"</a>".repeat(MAX_DEPTH);
        assert!(parse(&just).is_ok());
        let big = format!("<a>{}</a>", "x".repeat(MAX_DOCUMENT_BYTES));
        assert!(matches!(parse(&big), Err(XmlError::TooLarge { .. })));
        assert!(matches!(parse("<a><b></a>"), Err(XmlError::Malformed(_))));
        assert!(matches!(
            parse_root("<network/>", "domain"),
            Err(XmlError::WrongRoot { .. })
        ));
    }

    #[test]
    fn attribute_helpers_name_the_element() {
        let el = parse("<memory unit='KiB' n='x'>1024</memory>").unwrap();
        assert_eq!(el.get_attr("unit"), Some("KiB"));
        let err = el.parse_attr::<u32>("n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value 'x' for attribute 'n' in <memory>: invalid digit found in string"
        );
        assert!(el.req_attr("nope").is_err());
        let built = Element::new("a")
            .attr("q", "it's \"x\"")
            .child(Element::new("b"));
        assert_eq!(
            built.to_xml(),
            "<a q='it&apos;s &quot;x&quot;'>\n  <b/>\n</a>\n"
        );
    }

    /// A hostile nesting of any depth is an error, not a stack overflow, on a stack no
    /// larger than a tokio worker's; what is not nesting does not count.
    #[test]
    fn any_depth_is_an_error_not_a_crash() {
        for n in [MAX_DEPTH + 1, 5_000, 200_000] {
            let deep = "<a x='>'>".repeat(n) + &"</a>".repeat(n);
            let r = std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || parse(&deep))
                .unwrap()
                .join()
                .unwrap();
            assert_eq!(r, Err(XmlError::TooDeep { limit: MAX_DEPTH }), "depth {n}");
        }
        let unclosed = "<a>".repeat(100_000);
        assert_eq!(
            parse(&unclosed),
            Err(XmlError::TooDeep { limit: MAX_DEPTH })
        );
        let flat = format!(
            "<a>{}<!-- <b><b><b> --><![CDATA[<c><c>]]><?pi <d>?><e f=\">\"/></a>",
            "<b/>".repeat(1000)
        );
        assert!(parse(&flat).is_ok());
    }
}
