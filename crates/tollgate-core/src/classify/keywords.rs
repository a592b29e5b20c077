//! The keyword table: the words the scanner looks up and what each one
//! means, in a hash table built at compile time.

// ---------------------------------------------------------------------------
// Keywords
// ---------------------------------------------------------------------------

/// What a (lower-cased) word means to the classifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kw {
    None,
    Number,
    /// A reasoning or design verb; its label completes "asks to …".
    Reason,
    /// An explicit ask on its own; its label completes "asks …".
    Ask,
    /// A half-strength ask ("elaborate"); its label completes "asks …".
    WeakAsk,
    Constraint,
    /// Rarely prose: fn, def, printf, nullptr…
    Code,
    /// SQL, counted when written in capitals.
    Sql,
    /// Programming vocabulary: python, regex, api…
    Prog,
    /// Programming vocabulary that is also common in prose: function, program…
    ProgWeak,
    MathWord,
    /// Common function words of other languages.
    Foreign,
    /// statement, scenario, part… followed by a number.
    PartNoun,
    // Phrase openers (the next word completes them).
    Explain,
    Show,
    Walk,
    Pros,
    Difference,
    Capital,
    // Phrase closers (they look back at the previous words).
    Step,
    Detail,
    Least,
    Most,
    Not,
    Don,
    Than,
    Sure,
    Off,
}

const MAX_KEYWORD_LEN: usize = 16;

/// A keyword: the word (lower case), what it means, and for reasoning verbs
/// and explicit asks the label used in reasons.
pub(super) type Keyword = (&'static str, Kw, &'static str);

static NOT_A_KEYWORD: Keyword = ("", Kw::None, "");

#[rustfmt::skip]
pub(super) static KEYWORDS: &[Keyword] = &[
    // Reasoning and design verbs.
    ("analyze", Kw::Reason, "analyze"), ("analyse", Kw::Reason, "analyze"),
    ("analyzing", Kw::Reason, "analyze"), ("analysing", Kw::Reason, "analyze"),
    ("analysis", Kw::Reason, "analyze"),
    ("design", Kw::Reason, "design"), ("designing", Kw::Reason, "design"),
    ("architect", Kw::Reason, "architect"), ("architecture", Kw::Reason, "architect"),
    ("optimize", Kw::Reason, "optimize"), ("optimise", Kw::Reason, "optimize"),
    ("optimizing", Kw::Reason, "optimize"), ("optimization", Kw::Reason, "optimize"),
    ("optimisation", Kw::Reason, "optimize"),
    ("debug", Kw::Reason, "debug"), ("debugging", Kw::Reason, "debug"),
    ("refactor", Kw::Reason, "refactor"), ("refactoring", Kw::Reason, "refactor"),
    ("derive", Kw::Reason, "derive"), ("derivation", Kw::Reason, "derive"),
    ("evaluate", Kw::Reason, "evaluate"), ("evaluating", Kw::Reason, "evaluate"),
    ("assess", Kw::Reason, "assess"), ("critique", Kw::Reason, "critique"),
    ("tradeoff", Kw::Reason, "weigh trade-offs"), ("tradeoffs", Kw::Reason, "weigh trade-offs"),
    ("implications", Kw::Reason, "weigh implications"),
    ("diagnose", Kw::Reason, "diagnose"), ("troubleshoot", Kw::Reason, "troubleshoot"),
    ("investigate", Kw::Reason, "investigate"), ("synthesize", Kw::Reason, "synthesize"),
    ("formulate", Kw::Reason, "formulate"), ("strategy", Kw::Reason, "plan a strategy"),
    ("hypothesis", Kw::Reason, "reason about a hypothesis"),
    ("infer", Kw::Reason, "infer"), ("deduce", Kw::Reason, "deduce"),
    ("reasoning", Kw::Reason, "reason"), ("scalable", Kw::Reason, "design for scale"),
    ("scalability", Kw::Reason, "design for scale"), ("bottleneck", Kw::Reason, "find bottlenecks"),
    ("migrate", Kw::Reason, "migrate"), ("implement", Kw::Reason, "implement"),
    // Explicit asks.
    ("prove", Kw::Ask, "to prove"), ("proof", Kw::Ask, "for a proof"),
    ("justify", Kw::Ask, "to justify"), ("compare", Kw::Ask, "to compare"),
    ("comparison", Kw::Ask, "to compare"), ("contrast", Kw::Ask, "to contrast"),
    ("demonstrate", Kw::Ask, "to demonstrate"), ("elaborate", Kw::WeakAsk, "to elaborate"),
    ("rigorous", Kw::Ask, "for rigour"), ("rigorously", Kw::Ask, "for rigour"),
    ("thoroughly", Kw::WeakAsk, "for thoroughness"),
    ("explain", Kw::Explain, ""), ("show", Kw::Show, ""), ("walk", Kw::Walk, ""), ("pros", Kw::Pros, ""),
    ("difference", Kw::Difference, ""), ("differences", Kw::Difference, ""),
    ("step", Kw::Step, ""), ("detail", Kw::Detail, ""),
    // Constraints.
    ("must", Kw::Constraint, ""), ("should", Kw::Constraint, ""), ("ensure", Kw::Constraint, ""),
    ("without", Kw::Constraint, ""), ("exactly", Kw::Constraint, ""), ("never", Kw::Constraint, ""),
    ("always", Kw::Constraint, ""), ("require", Kw::Constraint, ""), ("requires", Kw::Constraint, ""),
    ("required", Kw::Constraint, ""), ("requirement", Kw::Constraint, ""),
    ("requirements", Kw::Constraint, ""), ("constraint", Kw::Constraint, ""),
    ("constraints", Kw::Constraint, ""), ("strictly", Kw::Constraint, ""),
    ("mandatory", Kw::Constraint, ""), ("avoid", Kw::Constraint, ""), ("only", Kw::Constraint, ""),
    // "at least", "at most", "do not", "don't", "no more than", "make sure".
    ("least", Kw::Least, ""), ("most", Kw::Most, ""), ("not", Kw::Not, ""), ("don", Kw::Don, ""),
    ("than", Kw::Than, ""), ("sure", Kw::Sure, ""),
    // "trade-off(s)", "capital of".
    ("off", Kw::Off, ""), ("offs", Kw::Off, ""), ("capital", Kw::Capital, ""),
    // Enumerated parts.
    ("statement", Kw::PartNoun, ""), ("scenario", Kw::PartNoun, ""), ("part", Kw::PartNoun, ""),
    ("case", Kw::PartNoun, ""), ("claim", Kw::PartNoun, ""), ("premise", Kw::PartNoun, ""),
    ("question", Kw::PartNoun, ""), ("task", Kw::PartNoun, ""), ("problem", Kw::PartNoun, ""),
    // Code that is rarely prose.
    ("fn", Kw::Code, ""), ("def", Kw::Code, ""), ("elif", Kw::Code, ""), ("impl", Kw::Code, ""),
    ("struct", Kw::Code, ""), ("println", Kw::Code, ""), ("printf", Kw::Code, ""),
    ("nullptr", Kw::Code, ""), ("typedef", Kw::Code, ""), ("namespace", Kw::Code, ""),
    ("lambda", Kw::Code, ""), ("const", Kw::Code, ""), ("async", Kw::Code, ""), ("await", Kw::Code, ""),
    ("usize", Kw::Code, ""), ("void", Kw::Code, ""), ("bool", Kw::Code, ""), ("mut", Kw::Code, ""),
    ("func", Kw::Code, ""), ("endif", Kw::Code, ""), ("cout", Kw::Code, ""), ("std", Kw::Code, ""),
    ("malloc", Kw::Code, ""), ("sizeof", Kw::Code, ""), ("isinstance", Kw::Code, ""),
    ("kwargs", Kw::Code, ""), ("null", Kw::Code, ""), ("undefined", Kw::Code, ""),
    ("include", Kw::Code, ""), ("define", Kw::Code, ""), ("pragma", Kw::Code, ""),
    ("self", Kw::Code, ""), ("args", Kw::Code, ""), ("len", Kw::Code, ""), ("str", Kw::Code, ""),
    ("dict", Kw::Code, ""), ("console", Kw::Code, ""), ("int", Kw::Code, ""),
    // SQL in capitals.
    ("select", Kw::Sql, ""), ("from", Kw::Sql, ""), ("join", Kw::Sql, ""),
    ("insert", Kw::Sql, ""), ("update", Kw::Sql, ""), ("delete", Kw::Sql, ""), ("group", Kw::Sql, ""),
    ("order", Kw::Sql, ""), ("create", Kw::Sql, ""), ("table", Kw::Sql, ""), ("values", Kw::Sql, ""),
    ("into", Kw::Sql, ""), ("having", Kw::Sql, ""),
    // Programming vocabulary.
    ("python", Kw::Prog, ""), ("javascript", Kw::Prog, ""), ("typescript", Kw::Prog, ""),
    ("java", Kw::ProgWeak, ""), ("rust", Kw::ProgWeak, ""), ("golang", Kw::Prog, ""), ("kotlin", Kw::Prog, ""),
    ("php", Kw::Prog, ""), ("sql", Kw::Prog, ""), ("html", Kw::Prog, ""), ("css", Kw::Prog, ""),
    ("json", Kw::Prog, ""), ("yaml", Kw::Prog, ""), ("regex", Kw::Prog, ""), ("api", Kw::Prog, ""),
    ("apis", Kw::Prog, ""), ("function", Kw::ProgWeak, ""), ("functions", Kw::ProgWeak, ""),
    ("method", Kw::ProgWeak, ""), ("algorithm", Kw::ProgWeak, ""), ("algorithms", Kw::ProgWeak, ""),
    ("compiler", Kw::Prog, ""), ("compile", Kw::ProgWeak, ""), ("runtime", Kw::Prog, ""),
    ("bug", Kw::ProgWeak, ""), ("bugs", Kw::ProgWeak, ""), ("code", Kw::ProgWeak, ""), ("coding", Kw::Prog, ""),
    ("program", Kw::ProgWeak, ""), ("programming", Kw::Prog, ""), ("script", Kw::ProgWeak, ""),
    ("database", Kw::Prog, ""), ("query", Kw::ProgWeak, ""), ("endpoint", Kw::Prog, ""),
    ("backend", Kw::Prog, ""), ("frontend", Kw::Prog, ""), ("kubernetes", Kw::Prog, ""),
    ("docker", Kw::Prog, ""), ("git", Kw::Prog, ""), ("server", Kw::ProgWeak, ""),
    ("recursion", Kw::Prog, ""), ("recursive", Kw::ProgWeak, ""), ("pointer", Kw::ProgWeak, ""),
    ("thread", Kw::ProgWeak, ""), ("threads", Kw::ProgWeak, ""), ("concurrency", Kw::ProgWeak, ""),
    ("mutex", Kw::Prog, ""), ("deadlock", Kw::Prog, ""), ("microservice", Kw::Prog, ""),
    ("microservices", Kw::Prog, ""), ("array", Kw::ProgWeak, ""), ("variable", Kw::ProgWeak, ""),
    ("exception", Kw::ProgWeak, ""), ("stacktrace", Kw::Prog, ""),
    // Maths vocabulary.
    ("equation", Kw::MathWord, ""), ("equations", Kw::MathWord, ""), ("integral", Kw::MathWord, ""),
    ("derivative", Kw::MathWord, ""), ("theorem", Kw::MathWord, ""), ("lemma", Kw::MathWord, ""),
    ("matrix", Kw::MathWord, ""), ("matrices", Kw::MathWord, ""), ("eigenvalue", Kw::MathWord, ""),
    ("eigenvalues", Kw::MathWord, ""), ("polynomial", Kw::MathWord, ""),
    ("probability", Kw::MathWord, ""), ("logarithm", Kw::MathWord, ""),
    ("factorial", Kw::MathWord, ""), ("variance", Kw::MathWord, ""), ("prime", Kw::MathWord, ""),
    ("integer", Kw::MathWord, ""), ("integers", Kw::MathWord, ""), ("sqrt", Kw::MathWord, ""),
    ("sin", Kw::MathWord, ""), ("cos", Kw::MathWord, ""), ("tan", Kw::MathWord, ""),
    ("log", Kw::MathWord, ""), ("ln", Kw::MathWord, ""), ("solve", Kw::MathWord, ""),
    ("calculate", Kw::MathWord, ""), ("modulo", Kw::MathWord, ""), ("vector", Kw::MathWord, ""),
    ("converge", Kw::MathWord, ""), ("convergence", Kw::MathWord, ""), ("algebra", Kw::MathWord, ""),
    ("calculus", Kw::MathWord, ""), ("inequality", Kw::MathWord, ""), ("quadratic", Kw::MathWord, ""),
    ("exponent", Kw::MathWord, ""), ("fraction", Kw::MathWord, ""), ("divisible", Kw::MathWord, ""),
    // Other languages' function words that English text hardly uses.
    ("der", Kw::Foreign, ""), ("das", Kw::Foreign, ""), ("und", Kw::Foreign, ""), ("ist", Kw::Foreign, ""),
    ("nicht", Kw::Foreign, ""), ("mit", Kw::Foreign, ""), ("ein", Kw::Foreign, ""), ("eine", Kw::Foreign, ""),
    ("ich", Kw::Foreign, ""), ("sie", Kw::Foreign, ""), ("wie", Kw::Foreign, ""), ("auf", Kw::Foreign, ""),
    ("les", Kw::Foreign, ""), ("une", Kw::Foreign, ""), ("dans", Kw::Foreign, ""), ("pour", Kw::Foreign, ""),
    ("avec", Kw::Foreign, ""), ("sont", Kw::Foreign, ""), ("nous", Kw::Foreign, ""), ("vous", Kw::Foreign, ""),
    ("que", Kw::Foreign, ""), ("una", Kw::Foreign, ""), ("por", Kw::Foreign, ""), ("para", Kw::Foreign, ""),
    ("como", Kw::Foreign, ""), ("della", Kw::Foreign, ""), ("sono", Kw::Foreign, ""), ("uma", Kw::Foreign, ""),
    ("pero", Kw::Foreign, ""), ("est", Kw::Foreign, ""), ("sur", Kw::Foreign, ""), ("wir", Kw::Foreign, ""),
];

const TABLE_BITS: u32 = 11;
const TABLE_MASK: usize = (1 << TABLE_BITS) - 1;

/// A word of up to 16 bytes as an exact, case-folded 128-bit key: its bytes
/// `| 0x20` (which lower-cases letters and maps no other word byte onto a
/// letter), zero-padded. Word bytes are never zero, so the length is implied.
const fn fold_key(w: &[u8]) -> u128 {
    let mut key = 0u128;
    let mut i = 0;
    while i < w.len() && i < 16 {
        key |= ((w[i] | 0x20) as u128) << (8 * i);
        i += 1;
    }
    key
}

/// [`fold_key`] of the word `t[start..end]` (`end - start <= 16`), with one
/// 16-byte load instead of a loop when the text allows it.
fn word_key(t: &[u8], start: usize, end: usize) -> u128 {
    let n = end - start;
    let raw = match t.get(start..start + 16) {
        Some(bytes) => {
            let mut chunk = [0u8; 16];
            chunk.copy_from_slice(bytes);
            u128::from_le_bytes(chunk)
        }
        None => return fold_key(&t[start..end]),
    };
    (raw | 0x2020_2020_2020_2020_2020_2020_2020_2020) & KEY_MASKS[n]
}

/// `KEY_MASKS[n]` keeps the low `n` bytes of a key.
static KEY_MASKS: [u128; MAX_KEYWORD_LEN + 1] = {
    let mut masks = [0u128; MAX_KEYWORD_LEN + 1];
    let mut n = 1;
    while n <= MAX_KEYWORD_LEN {
        masks[n] = (masks[n - 1] << 8) | 0xFF;
        n += 1;
    }
    masks
};

/// Table slot of a key: multiplicative hashing of both halves.
const fn slot_of(key: u128) -> usize {
    let folded = (key as u64) ^ ((key >> 64) as u64).rotate_left(29);
    (folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - TABLE_BITS)) as usize
}

/// [`fold_key`] of every keyword, in `KEYWORDS` order.
static KEYWORD_KEYS: [u128; KEYWORDS.len()] = {
    let mut keys = [0u128; KEYWORDS.len()];
    let mut k = 0;
    while k < KEYWORDS.len() {
        let word = KEYWORDS[k].0.as_bytes();
        assert!(!word.is_empty() && word.len() <= MAX_KEYWORD_LEN, "bad keyword length");
        let mut i = 0;
        while i < word.len() {
            assert!(word[i].is_ascii_lowercase(), "keywords are lower-case letters");
            i += 1;
        }
        keys[k] = fold_key(word);
        k += 1;
    }
    keys
};

/// Open-addressing hash table from key slot to `KEYWORDS` index + 1 (0 =
/// empty), built at compile time; duplicate keywords fail the build.
static KEYWORD_TABLE: [u16; 1 << TABLE_BITS] = {
    assert!(KEYWORDS.len() * 4 < (1 << TABLE_BITS), "keyword table too full");
    let mut table = [0u16; 1 << TABLE_BITS];
    let mut k = 0;
    while k < KEYWORDS.len() {
        let key = KEYWORD_KEYS[k];
        let mut slot = slot_of(key);
        while table[slot] != 0 {
            assert!(KEYWORD_KEYS[table[slot] as usize - 1] != key, "duplicate keyword");
            slot = (slot + 1) & TABLE_MASK;
        }
        table[slot] = k as u16 + 1;
        k += 1;
    }
    table
};

/// Index into [`KEYWORD_FILTER`]: the low five bits of the first and last
/// bytes (case-insensitive for letters; other bytes only share entries).
const fn filter_index(first: u8, last: u8) -> usize {
    (((first & 0x1F) as usize) << 5) | (last & 0x1F) as usize
}

/// A cheap pre-check that rejects most words before hashing: bit `n - 1` of
/// `KEYWORD_FILTER[filter_index(first, last)]` is set when some keyword of
/// length `n` starts and ends with those letters.
static KEYWORD_FILTER: [u16; 1024] = {
    let mut filter = [0u16; 1024];
    let mut k = 0;
    while k < KEYWORDS.len() {
        let word = KEYWORDS[k].0.as_bytes();
        filter[filter_index(word[0], word[word.len() - 1])] |= 1 << (word.len() - 1);
        k += 1;
    }
    filter
};

/// The keyword `t[start..end]` is (ignoring ASCII case), or [`NOT_A_KEYWORD`].
pub(super) fn lookup(t: &[u8], start: usize, end: usize) -> &'static Keyword {
    let n = end - start;
    if n == 0 || n > MAX_KEYWORD_LEN || KEYWORD_FILTER[filter_index(t[start], t[end - 1])] >> (n - 1) & 1 == 0 {
        return &NOT_A_KEYWORD;
    }
    let key = word_key(t, start, end);
    let mut slot = slot_of(key);
    for _ in 0..KEYWORD_TABLE.len() {
        let entry = usize::from(KEYWORD_TABLE[slot]);
        if entry == 0 {
            break;
        }
        if KEYWORD_KEYS[entry - 1] == key {
            return &KEYWORDS[entry - 1];
        }
        slot = (slot + 1) & TABLE_MASK;
    }
    &NOT_A_KEYWORD
}
