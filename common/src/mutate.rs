//! Mutations of XML documents for tests that check that nothing panics on input: a
//! fixed-seed generator that mostly keeps the markup (values and texts replaced with
//! hostile ones, elements spliced in) and sometimes breaks it (cuts, repeats, changed
//! characters, a truncated end), so both the parser and what lies behind it are hit.

/// xorshift64*: small, fixed, good enough to pick mutations.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

/// Markup and values spliced in after a tag; callers add their own elements.
pub const SPLICES: &[&str] = &[
    "99999999999999999999999",
    "-1",
    "0",
    "18446744073709551616",
    "4294967296",
    "0x",
    ",",
    ",,=on,",
    "'",
    "\"",
    "&amp;",
    "&#0;",
    "&#x110000;",
    "<!DOCTYPE d [<!ENTITY x 'y'>]>",
    "<![CDATA[<devices/>]]>",
    "<?pi x?>",
    "unit='YiB'",
    "\u{202e}",
    "../../etc/passwd",
    "/dev/null",
    "\n",
    "",
];

/// Values that attribute values and text get replaced with.
pub const VALUES: &[&str] = &[
    "99999999999999999999",
    "-1",
    "0",
    "4294967296",
    "18446744073709551615",
    "0xffff",
    "1.5",
    "a,b",
    ",,=on,",
    "x,id=evil",
    "../../etc/shadow",
    "/dev/null",
    "",
    " ",
    "yes",
    "no",
    "on",
    "virtio",
    "pci",
    "usb",
    "spice",
    "vnc",
    "q35",
    "pc",
    "qcow2",
    "network",
    "52:54:00:zz:00:00",
    "ff:ff:ff:ff:ff:ff",
    "&amp;&lt;",
    "\u{202e}rtl",
    "\u{1f600}",
    "tab\there",
    "line\nbreak",
    "nul\0byte",
];

/// Spans of quoted attribute values and of text between tags.
fn value_spans(s: &[char]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            q @ ('\'' | '"') if i > 0 && s[i - 1] == '=' => {
                if let Some(end) = (i + 1..s.len()).find(|j| s[*j] == q) {
                    spans.push((i + 1, end));
                    i = end;
                }
            }
            '>' => {
                if let Some(end) = (i + 1..s.len()).find(|j| s[*j] == '<') {
                    if end > i + 1 && s[i + 1..end].iter().any(|c| !c.is_whitespace()) {
                        spans.push((i + 1, end));
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    spans
}

/// One mutation of `base`: mostly a value or text replaced or an element spliced in
/// (from [`SPLICES`] and `extra`), sometimes broken markup.
pub fn mutate(rng: &mut Rng, base: &str, extra: &[&str]) -> String {
    let mut s: Vec<char> = base.chars().collect();
    for _ in 0..1 + rng.below(3) {
        let n = s.len();
        match rng.below(10) {
            // Most mutations keep the markup: a value or a text is replaced...
            0..=3 => {
                let spans = value_spans(&s);
                if !spans.is_empty() {
                    let (a, b) = spans[rng.below(spans.len())];
                    let v = VALUES[rng.below(VALUES.len())];
                    s.splice(a..b, v.chars());
                }
            }
            // ... or an element is spliced in after a tag.
            4..=5 => {
                let tags: Vec<usize> = (0..n).filter(|i| s[*i] == '>').collect();
                if !tags.is_empty() {
                    let at = tags[rng.below(tags.len())] + 1;
                    let k = rng.below(SPLICES.len() + extra.len());
                    let piece = SPLICES.get(k).unwrap_or_else(|| &extra[k - SPLICES.len()]);
                    s.splice(at..at, piece.chars());
                }
            }
            // The rest break it: a range cut or repeated, a character changed, the end cut.
            6 => {
                let a = rng.below(n);
                let b = (a + rng.below(64)).min(n);
                s.drain(a..b);
            }
            7 => {
                let a = rng.below(n);
                let b = (a + rng.below(200)).min(n);
                let piece: Vec<char> = s[a..b].to_vec();
                let at = rng.below(s.len());
                s.splice(at..at, piece);
            }
            8 => {
                if n > 0 {
                    let at = rng.below(n);
                    const CHARS: &[u8] = b" <>/='\"&;,0123456789abcxyz-";
                    s[at] = char::from(CHARS[rng.below(CHARS.len())]);
                }
            }
            _ => {
                let at = rng.below(n);
                s.truncate(at);
            }
        }
    }
    s.into_iter().collect()
}

/// One kind of input and how to run it: returns how far the input got (0: refused by
/// the parser; higher: further stages).
pub struct Target<'a> {
    pub bases: &'a [&'a str],
    /// Elements of this kind's own to splice in, beside [`SPLICES`].
    pub splices: &'a [&'a str],
    pub check: &'a (dyn Fn(&str) -> usize + std::panic::RefUnwindSafe),
}

/// Runs `per_base` mutations of every base of every target from `seed`. Fails (panics,
/// for a test) naming the first input that panicked, or when fewer than one input in
/// ten reached stage `deepest` (then the mutations no longer test what lies behind the
/// parser). Returns how many inputs stopped at each stage.
pub fn assert_no_panics(
    seed: u64,
    per_base: usize,
    deepest: usize,
    targets: &[Target],
) -> Vec<usize> {
    let mut rng = Rng(seed);
    let mut reached = vec![0usize; deepest + 1];
    let mut failures = Vec::new();
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for t in targets {
        for (b, base) in t.bases.iter().enumerate() {
            for case in 0..per_base {
                let text = mutate(&mut rng, base, t.splices);
                match std::panic::catch_unwind(|| (t.check)(&text)) {
                    Ok(stage) => reached[stage.min(deepest)] += 1,
                    Err(_) => failures.push(format!("base {b} case {case}:\n{text}")),
                }
            }
        }
    }
    std::panic::set_hook(hook);
    eprintln!("inputs stopped at each stage: {reached:?}");
    assert!(
        failures.is_empty(),
        "{} inputs panicked; first:\n{}",
        failures.len(),
        failures.first().map(String::as_str).unwrap_or_default()
    );
    let total: usize = reached.iter().sum();
    assert!(
        reached[deepest] * 10 >= total,
        "too few mutations reach stage {deepest}: {reached:?}"
    );
    reached
}
