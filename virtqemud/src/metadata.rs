//! A domain's `<title>`, `<description>` and the elements applications keep in
//! `<metadata>`, one per XML namespace (libvirt's `virDomainSetMetadata`): reading and
//! changing them in a definition. The driver decides which definitions (live, config).

use common::error::{ErrorCode, VirError};
use common::xml::{Element, Node};

use crate::xml::Domain;

/// `virDomainMetadataType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Description,
    Title,
    /// An element of its own namespace in `<metadata>`.
    Element,
}

impl Kind {
    pub fn from_wire(kind: i32) -> Result<Kind, VirError> {
        match kind {
            0 => Ok(Kind::Description),
            1 => Ok(Kind::Title),
            2 => Ok(Kind::Element),
            _ => Err(VirError::invalid_arg(format!(
                "unknown metadata type '{kind}'"
            ))),
        }
    }
}

/// A checked `SetMetadata` request. libvirt-dbus passes libvirt's NULL as "".
#[derive(Debug, Clone)]
pub enum Change {
    Description(Option<String>),
    Title(Option<String>),
    /// The element for namespace `uri`: added or replaced by `Some`, removed by `None`.
    Element {
        uri: String,
        element: Option<Element>,
    },
}

impl Change {
    pub fn new(kind: Kind, metadata: &str, key: &str, uri: &str) -> Result<Change, VirError> {
        let text = (!metadata.is_empty()).then(|| metadata.to_owned());
        match kind {
            Kind::Description | Kind::Title => {
                if !key.is_empty() || !uri.is_empty() {
                    return Err(VirError::invalid_arg(
                        "key and uri must be empty for a title or description",
                    ));
                }
                if kind == Kind::Title {
                    if text.as_deref().is_some_and(|t| t.contains('\n')) {
                        return Err(VirError::invalid_arg(
                            "metadata title can't contain newlines",
                        ));
                    }
                    return Ok(Change::Title(text));
                }
                Ok(Change::Description(text))
            }
            Kind::Element => {
                if uri.is_empty() {
                    return Err(VirError::invalid_arg(
                        "uri is required for a metadata element",
                    ));
                }
                let Some(text) = text else {
                    return Ok(Change::Element {
                        uri: uri.to_owned(),
                        element: None,
                    });
                };
                if !is_ncname(key) {
                    return Err(VirError::invalid_arg(format!(
                        "metadata key '{key}' is not a valid XML namespace prefix"
                    )));
                }
                let parsed = common::xml::parse(&text).map_err(|e| {
                    VirError::new(ErrorCode::XmlError, format!("metadata element: {e}"))
                })?;
                Ok(Change::Element {
                    uri: uri.to_owned(),
                    element: Some(in_namespace(parsed, key, uri)),
                })
            }
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Change::Description(_) => Kind::Description,
            Change::Title(_) => Kind::Title,
            Change::Element { .. } => Kind::Element,
        }
    }

    /// The namespace the `MetadataChange` signal names ("" for title and description).
    pub fn uri(&self) -> &str {
        match self {
            Change::Element { uri, .. } => uri,
            _ => "",
        }
    }

    pub fn apply(&self, dom: &mut Domain) {
        match self {
            Change::Description(t) => dom.description.clone_from(t),
            Change::Title(t) => dom.title.clone_from(t),
            Change::Element { uri, element } => {
                let meta = dom.metadata.get_or_insert_with(|| Element::new("metadata"));
                let scope = meta.clone();
                meta.children.retain(|n| match n {
                    Node::Element(e) => namespace_of(e, &scope).as_deref() != Some(uri.as_str()),
                    Node::Text(_) => true,
                });
                if let Some(e) = element {
                    meta.children.push(Node::Element(e.clone()));
                }
                if meta.children.is_empty() {
                    dom.metadata = None;
                }
            }
        }
    }
}

/// What `GetMetadata` answers for `kind` (and `uri`, for an element).
pub fn get(dom: &Domain, kind: Kind, uri: &str) -> Result<String, VirError> {
    let found = match kind {
        Kind::Description => dom.description.clone(),
        Kind::Title => dom.title.clone(),
        Kind::Element => {
            if uri.is_empty() {
                return Err(VirError::invalid_arg(
                    "uri is required for a metadata element",
                ));
            }
            dom.metadata.as_ref().and_then(|meta| {
                meta.elements()
                    .find(|e| namespace_of(e, meta).as_deref() == Some(uri))
                    .map(|e| with_declaration(e, meta).to_xml().trim_end().to_owned())
            })
        }
    };
    found.ok_or_else(|| {
        VirError::new(
            ErrorCode::NoDomainMetadata,
            "Requested metadata element is not present",
        )
    })
}

/// `el` renamed into namespace `uri` under prefix `key`, as libvirt stores it.
fn in_namespace(mut el: Element, key: &str, uri: &str) -> Element {
    let local = el.name.rsplit(':').next().unwrap_or_default().to_owned();
    el.name = format!("{key}:{local}");
    let decl = format!("xmlns:{key}");
    el.attrs.retain(|(k, _)| *k != decl);
    el.attrs.insert(0, (decl, uri.to_owned()));
    el
}

/// The namespace URI of a child of `<metadata>`: declared on itself, or on `<metadata>`.
fn namespace_of(el: &Element, metadata: &Element) -> Option<String> {
    let decl = match el.name.split_once(':') {
        Some((prefix, _)) => format!("xmlns:{prefix}"),
        None => "xmlns".to_owned(),
    };
    el.get_attr(&decl)
        .or_else(|| metadata.get_attr(&decl))
        .map(str::to_owned)
}

/// `el` carrying its namespace declaration itself, so it stands alone as a document.
fn with_declaration(el: &Element, metadata: &Element) -> Element {
    let mut el = el.clone();
    if let (Some((prefix, _)), Some(uri)) = (el.name.split_once(':'), namespace_of(&el, metadata)) {
        let decl = format!("xmlns:{prefix}");
        if el.get_attr(&decl).is_none() {
            el.attrs.insert(0, (decl, uri));
        }
    }
    el
}

/// An XML name without a colon (a namespace prefix).
fn is_ncname(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain() -> Domain {
        Domain::parse(
            "<domain type='qemu'><name>m</name><uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>\
             <memory>65536</memory><os><type>hvm</type></os></domain>",
        )
        .expect("domain")
    }

    #[test]
    fn title_and_description_are_set_read_and_removed() {
        let mut d = domain();
        assert!(get(&d, Kind::Title, "").is_err());
        Change::new(Kind::Title, "A title", "", "")
            .expect("ok")
            .apply(&mut d);
        Change::new(Kind::Description, "line 1\nline 2", "", "")
            .expect("ok")
            .apply(&mut d);
        assert_eq!(get(&d, Kind::Title, "").expect("title"), "A title");
        assert_eq!(
            get(&d, Kind::Description, "").expect("description"),
            "line 1\nline 2"
        );
        Change::new(Kind::Title, "", "", "")
            .expect("ok")
            .apply(&mut d);
        let e = get(&d, Kind::Title, "").expect_err("removed");
        assert_eq!(
            e.message,
            "metadata not found: Requested metadata element is not present"
        );
    }

    #[test]
    fn bad_requests_are_refused() {
        for (kind, text, key, uri, want) in [
            (Kind::Title, "two\nlines", "", "", "newlines"),
            (Kind::Title, "t", "k", "", "must be empty"),
            (Kind::Element, "<a/>", "k", "", "uri is required"),
            (
                Kind::Element,
                "<a/>",
                "k:x",
                "http://x/",
                "not a valid XML namespace prefix",
            ),
            (
                Kind::Element,
                "<a/>",
                "",
                "http://x/",
                "not a valid XML namespace prefix",
            ),
            (Kind::Element, "<a>", "k", "http://x/", "metadata element"),
        ] {
            let e = Change::new(kind, text, key, uri).expect_err(text);
            assert!(e.message.contains(want), "{}: {}", text, e.message);
        }
        assert!(Kind::from_wire(3).is_err());
    }

    #[test]
    fn elements_are_kept_one_per_namespace() {
        let mut d = domain();
        let set = |d: &mut Domain, xml: &str, key: &str, uri: &str| {
            Change::new(Kind::Element, xml, key, uri)
                .expect("ok")
                .apply(d)
        };
        set(
            &mut d,
            "<app><x a='1'>v</x></app>",
            "one",
            "http://one.example/",
        );
        set(
            &mut d,
            "<old:thing xmlns:old='urn:o'/>",
            "two",
            "http://two.example/",
        );
        set(
            &mut d,
            "<app><x a='2'/></app>",
            "uno",
            "http://one.example/",
        );
        assert_eq!(
            get(&d, Kind::Element, "http://one.example/").expect("one"),
            "<uno:app xmlns:uno='http://one.example/'>\n  <x a='2'/>\n</uno:app>"
        );
        let two = get(&d, Kind::Element, "http://two.example/").expect("two");
        assert!(
            two.starts_with("<two:thing xmlns:two='http://two.example/'"),
            "{two}"
        );
        // The document written and read back keeps both.
        let again = Domain::parse(&d.to_xml(crate::xml::XmlOpts {
            inactive: true,
            id: None,
            secure: true,
        }))
        .expect("reparse");
        assert_eq!(
            get(&again, Kind::Element, "http://one.example/").expect("one"),
            get(&d, Kind::Element, "http://one.example/").expect("one")
        );
        set(&mut d, "", "", "http://one.example/");
        set(&mut d, "", "", "http://two.example/");
        assert!(d.metadata.is_none());
        assert!(get(&d, Kind::Element, "http://one.example/").is_err());
    }
}
