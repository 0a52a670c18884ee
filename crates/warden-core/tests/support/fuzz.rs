//! A seeded input generator for the parser fuzz tests: arbitrary bytes, and structure-aware
//! mutations of valid documents (bytes and lines flipped, deleted, duplicated, inserted; values
//! swapped for extreme ones). No nightly, no cargo-fuzz: a fixed number of cases from a fixed
//! seed, so a run is reproducible and its time is bounded.
//!
//! Shared by `warden-core`'s parser fuzz tests and, through `#[path]`, the runtime's API body
//! fuzz test and the end-to-end one, so every parser meets the same kinds of damage.
//!
//! `WARDEN_FUZZ_CASES` sets the number of cases per test (default [`DEFAULT_CASES`]);
//! `WARDEN_FUZZ_SEED` another base seed, to explore further (a failure prints the seed and
//! case to replay it).

#![allow(dead_code)] // Each including test uses a part.

/// Cases per parser in a default run: well under a minute in a debug build.
pub const DEFAULT_CASES: usize = 5_000;
pub const DEFAULT_SEED: u64 = 0x5eed_f022_0013;

/// The number of cases to run: `WARDEN_FUZZ_CASES`, or `default`.
pub fn cases(default: usize) -> usize {
    std::env::var("WARDEN_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(default)
}

/// The base seed: `WARDEN_FUZZ_SEED` (decimal or 0x-hex), or [`DEFAULT_SEED`].
pub fn seed() -> u64 {
    let Ok(text) = std::env::var("WARDEN_FUZZ_SEED") else { return DEFAULT_SEED };
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    };
    parsed.unwrap_or_else(|| panic!("WARDEN_FUZZ_SEED={text:?} is not a number"))
}

/// SplitMix64: tiny, fast, and the same sequence on every machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The generator of case `case` of a run seeded `seed` (cases are independent, so one can
    /// be replayed alone).
    pub fn for_case(seed: u64, case: usize) -> Rng {
        let mut rng = Rng(seed ^ (case as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        rng.next();
        rng
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Values that break naive parsers: out-of-range numbers, NaN-ish floats, odd durations and
/// sizes, deep nesting, huge and hostile strings.
pub fn extreme_value(rng: &mut Rng) -> String {
    const FIXED: &[&str] = &[
        "0",
        "-1",
        "-0",
        "1",
        "9223372036854775807",
        "-9223372036854775808",
        "18446744073709551616",
        "99999999999999999999999999999",
        "1e309",
        "-1e309",
        "nan",
        "-nan",
        "inf",
        "-inf",
        "0.0000001",
        "1.5",
        "true",
        "false",
        "[]",
        "{}",
        "\"\"",
        "''",
        "\"0ms\"",
        "\"0s\"",
        "\"-1s\"",
        "\"1ms\"",
        "\"18446744073709551615ms\"",
        "\"213503982334d\"",
        "\"99999999999999999999d\"",
        "\"1.5h\"",
        "\"1e3s\"",
        "\"0B\"",
        "\"18446744073709551615GiB\"",
        "\"16EiB\"",
        "\"0%\"",
        "\"100%\"",
        "\"101%\"",
        "\"-5%\"",
        "\"255%\"",
        "\"%\"",
        "\"\\u0000\"",
        "\"a\\u0000b\"",
        "\"/\"",
        "\"/..\"",
        "\"../../etc\"",
        "\"\\u202e\\u0007\\u001b[31m\"",
        "\"\u{1d518}\u{00e9}\u{4e2d}\"",
        "\"each-host\"",
        "\"warm-standby\"",
        "\"checkpointed\"",
        "\"oci\"",
        "\"cell\"",
        "\"none\"",
        "\"always\"",
        "\"never\"",
        "\"rollback\"",
        "\"http://\"",
        "\"tcp:\"",
        "1979-05-27T07:32:00Z",
        "[1, \"a\", 2.5, true]",
        "[[]]",
        "{ a = 1, a = 2 }",
    ];
    match rng.below(8) {
        0 => {
            // Deep nesting: arrays or inline tables, sometimes past any sane limit.
            let depth = *rng.pick(&[10, 100, 1_000, 5_000]);
            if rng.chance(2) {
                format!("{}{}", "[".repeat(depth), "]".repeat(depth))
            } else {
                format!("{}1{}", "{ a = ".repeat(depth), " }".repeat(depth))
            }
        }
        1 => {
            // A very long string, of an ASCII or a multi-byte character.
            let unit = *rng.pick(&["a", "é", "\u{1d518}", "\\u0000", "%"]);
            format!("\"{}\"", unit.repeat(*rng.pick(&[64, 4_096, 20_000])))
        }
        2 => format!("{}", rng.next() as i64),
        3 => format!("\"{}ms\"", rng.next()),
        _ => rng.pick(FIXED).to_string(),
    }
}

/// Fragments that change a document's structure when inserted.
const FRAGMENTS: &[&str] = &[
    "[",
    "]",
    "{",
    "}",
    "[[",
    "]]",
    "\"",
    "'",
    "\"\"\"",
    "'''",
    "=",
    ".",
    ",",
    "#",
    "\n",
    "\r\n",
    "\t",
    "\\",
    "\\u",
    "\0",
    "\u{feff}",
    "\u{202e}",
    "\u{1b}",
    "\u{7f}",
    "é",
    "\u{1d518}",
    " = ",
    "[cell]\n",
    "[restart]\n",
    "[[state]]\n",
    "[[probes]]\n",
    "[placement]\n",
    "[replication]\n",
    "[cell.limits]\n",
    "a.b.c = 1\n",
    "x = 1\n",
];

/// One to four random mutations of `doc` (a valid document, as text).
pub fn mutate(rng: &mut Rng, doc: &str, others: &[&str]) -> String {
    let mut text = doc.to_string();
    for _ in 0..1 + rng.below(4) {
        text = match rng.below(10) {
            0 => mutate_bytes(rng, text.as_bytes()),
            1 => {
                let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
                if !lines.is_empty() {
                    let i = rng.below(lines.len());
                    lines.remove(i);
                }
                lines.join("\n")
            }
            2 => {
                let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
                if !lines.is_empty() {
                    let i = rng.below(lines.len());
                    let line = lines[i].clone();
                    for _ in 0..1 + rng.below(3) {
                        lines.insert(i, line.clone());
                    }
                }
                lines.join("\n")
            }
            3 => {
                let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
                if lines.len() > 1 {
                    let (a, b) = (rng.below(lines.len()), rng.below(lines.len()));
                    lines.swap(a, b);
                }
                lines.join("\n")
            }
            4 if !others.is_empty() => {
                // A line of another document, somewhere in this one.
                let other: Vec<&str> = rng.pick(others).lines().collect();
                let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
                if !other.is_empty() {
                    let at = rng.below(lines.len() + 1);
                    lines.insert(at, rng.pick(&other).to_string());
                }
                lines.join("\n")
            }
            5..=7 => replace_a_value(rng, &text),
            _ => {
                let at = char_boundary(&text, rng.below(text.len() + 1));
                let mut out = text.clone();
                let fragment = *rng.pick(FRAGMENTS);
                out.insert_str(at, fragment);
                out
            }
        };
    }
    text
}

/// Replaces what follows `=` on one line (or an element of an array) with an extreme value.
fn replace_a_value(rng: &mut Rng, text: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let assignments: Vec<usize> = (0..lines.len()).filter(|&i| lines[i].contains('=')).collect();
    if assignments.is_empty() {
        return text.to_string();
    }
    let i = *rng.pick(&assignments);
    let eq = lines[i].find('=').unwrap_or(0);
    let value = extreme_value(rng);
    lines[i] =
        if rng.chance(4) { format!("{} [{value}, {value}]", &lines[i][..=eq]) } else { format!("{} {value}", &lines[i][..=eq]) };
    lines.join("\n")
}

/// Byte-level damage; the result is made valid UTF-8 again (lossily), since parsers take `&str`.
fn mutate_bytes(rng: &mut Rng, bytes: &[u8]) -> String {
    let mut bytes = bytes.to_vec();
    if bytes.is_empty() {
        bytes.push(rng.next() as u8);
    }
    match rng.below(4) {
        0 => {
            let i = rng.below(bytes.len());
            bytes[i] ^= 1 << rng.below(8);
        }
        1 => {
            let start = rng.below(bytes.len());
            let end = (start + 1 + rng.below(16)).min(bytes.len());
            bytes.drain(start..end);
        }
        2 => {
            let start = rng.below(bytes.len());
            let end = (start + 1 + rng.below(32)).min(bytes.len());
            let copy = bytes[start..end].to_vec();
            let at = rng.below(bytes.len() + 1);
            bytes.splice(at..at, copy);
        }
        _ => {
            let at = rng.below(bytes.len() + 1);
            let junk: Vec<u8> = (0..1 + rng.below(8)).map(|_| rng.next() as u8).collect();
            bytes.splice(at..at, junk);
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Arbitrary bytes: random, or random text over a TOML/JSON-ish alphabet.
pub fn arbitrary_bytes(rng: &mut Rng) -> Vec<u8> {
    let len = *rng.pick(&[0, 1, 8, 64, 512, 4_096]);
    if rng.chance(2) {
        (0..len).map(|_| rng.next() as u8).collect()
    } else {
        const ALPHABET: &[u8] = b"[]{}\"'=.,:#\n \t\\0123456789-+eE_abcnrtuxyz%/";
        (0..len).map(|_| *rng.pick(ALPHABET)).collect()
    }
}

fn char_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// Runs `check` on `cases` inputs from `input(rng)`; a panic is reported with the seed, the
/// case and the input (shortened), so it can be replayed with `WARDEN_FUZZ_SEED`.
pub fn run<T: std::fmt::Debug>(name: &str, cases: usize, mut input: impl FnMut(&mut Rng) -> T, check: impl Fn(&T)) {
    let seed = seed();
    for case in 0..cases {
        let mut rng = Rng::for_case(seed, case);
        let value = input(&mut rng);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&value)));
        if let Err(panic) = outcome {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(non-string panic)");
            let shown = format!("{value:?}");
            let shown: String = shown.chars().take(2_000).collect();
            panic!("{name}: case {case} of seed {seed:#x} panicked: {why}\ninput: {shown}");
        }
    }
}
