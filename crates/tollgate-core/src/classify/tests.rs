// On the Worker's target, `#[test]` is wasm-bindgen-test's: the same tests run there in node.
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

use std::collections::BTreeMap;

use super::arithmetic::{log2, logistic};
use super::features::CONTEXT_DISCOUNT;
use super::keywords::{KEYWORDS, Kw, lookup};
use super::scanner::{WORD_BYTE, word_end};
use super::*;

fn user(text: &str) -> Classification {
    let turns = [Turn { role: TurnRole::User, text }];
    classify(&view(&turns), &ClassifierConfig::default())
}

fn view<'a>(turns: &'a [Turn<'a>]) -> PromptView<'a> {
    let bytes: usize = turns.iter().map(|t| t.text.len()).sum();
    PromptView { system: "", turns, tool_count: 0, tokens: u32::try_from(bytes.div_ceil(4)).unwrap_or(u32::MAX) }
}

fn value_of(c: &Classification, feature: Feature) -> f64 {
    c.features.iter().find(|f| f.feature == feature).map(|f| f.value).unwrap()
}

fn value(text: &str, feature: Feature) -> f64 {
    value_of(&user(text), feature)
}

/// `feature` fires (value ≥ `min`) on every positive and stays at 0 on every negative.
fn fires(feature: Feature, min: f64, positives: &[&str], negatives: &[&str]) {
    for text in positives {
        let v = value(text, feature);
        assert!(v >= min, "{feature} should fire on {text:?} (value {v})");
    }
    for text in negatives {
        let v = value(text, feature);
        assert!(v == 0.0, "{feature} should not fire on {text:?} (value {v})");
    }
}

const EASY: &[&str] = &[
    "What is the capital of Australia?",
    "How many days are in a leap year?",
    "Who wrote Pride and Prejudice?",
    "When did the Berlin Wall fall?",
    "Translate 'good morning' into Spanish.",
    "Give me a synonym for 'happy'.",
    "hi",
    "Reply with OK.",
];

const HARD: &[&str] = &[
    "Design a multi-region, active-active architecture for a payments ledger that must guarantee \
     exactly-once settlement. Compare the trade-offs of a TrueTime-style clock versus a deterministic \
     scheduler, and explain step by step how you would handle a partition between regions.",
    "```rust\nfn merge(a: &mut Vec<i32>, b: &[i32]) {\n    for x in b { a.push(*x); }\n    a.sort();\n}\n```\n\
     Refactor this to run in O(n+m) without extra allocation. It must stay stable, should not use unsafe, \
     and explain why your version is correct.",
    "Prove that there are infinitely many primes of the form 4k+3. Justify every step rigorously.",
    "Derive the closed form of \\sum_{k=1}^{n} k^2 and prove it by induction. Then generalise the method \
     to k^3 and analyze the complexity of computing it.",
    "You are reviewing a distributed cache. Requirements:\n1. reads must be linearizable\n2. writes must \
     survive the loss of any two nodes\n3. p99 latency must stay under 5 ms\nEvaluate whether a \
     quorum design meets all three, and justify your answer.",
];

#[test]
fn the_same_input_always_gives_the_identical_output() {
    let system = "You are a careful assistant.";
    let turns = [
        Turn { role: TurnRole::User, text: HARD[1] },
        Turn { role: TurnRole::Assistant, text: "Here is a first attempt: ```let x = 1;```" },
        Turn { role: TurnRole::User, text: HARD[0] },
    ];
    let prompt = PromptView { system, turns: &turns, tool_count: 2, tokens: 700 };
    let config = ClassifierConfig::default();
    let first = classify(&prompt, &config);
    for _ in 0..3 {
        let again = classify(&prompt, &config);
        assert_eq!(again, first);
        assert_eq!(again.score.to_bits(), first.score.to_bits());
    }
}

#[test]
fn easy_factual_questions_score_below_hard_multi_constraint_prompts() {
    let easiest_hard = HARD.iter().map(|t| user(t).score).fold(f64::INFINITY, f64::min);
    let hardest_easy = EASY.iter().map(|t| user(t).score).fold(f64::NEG_INFINITY, f64::max);
    assert!(hardest_easy < easiest_hard, "easy up to {hardest_easy}, hard from {easiest_hard}");
    // With room to spare around the usual 0.5 threshold.
    assert!(hardest_easy < 0.25, "easy prompts should stay cheap: {hardest_easy}");
    assert!(easiest_hard > 0.6, "hard prompts should go premium: {easiest_hard}");
}

#[test]
fn every_feature_is_reported_once_in_a_stable_order() {
    let c = user(HARD[0]);
    let order: Vec<Feature> = c.features.iter().map(|f| f.feature).collect();
    assert_eq!(order, Feature::ALL.to_vec());
    for fv in &c.features {
        assert!((0.0..=1.0).contains(&fv.value), "{fv:?}");
        let expected = ClassifierConfig::default().weight(fv.feature) * fv.value;
        assert_eq!(fv.contribution.to_bits(), expected.to_bits());
    }
}

#[test]
fn feature_names_round_trip_and_are_snake_case() {
    for f in Feature::ALL {
        assert_eq!(Feature::from_name(f.name()), Some(f));
        assert!(f.name().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{f}");
    }
    assert_eq!(Feature::from_name("Code"), None);
    assert_eq!(Feature::ALL.len(), Feature::COUNT);
}

#[test]
fn tokens_grow_with_the_prompt_size() {
    let size = |tokens| {
        let turns = [Turn { role: TurnRole::User, text: "x" }];
        let prompt = PromptView { system: "", turns: &turns, tool_count: 0, tokens };
        value_of(&classify(&prompt, &ClassifierConfig::default()), Feature::Tokens)
    };
    assert_eq!(size(10), 0.0);
    assert!(size(200) > size(100));
    assert!(size(4000) > size(200));
    assert_eq!(size(u32::MAX), 1.0);
}

#[test]
fn turns_fire_on_a_long_conversation_and_not_on_a_single_message() {
    let turns: Vec<Turn<'_>> = (0..8)
        .map(|i| Turn { role: if i % 2 == 0 { TurnRole::User } else { TurnRole::Assistant }, text: "ok" })
        .collect();
    assert!(value_of(&classify(&view(&turns), &ClassifierConfig::default()), Feature::Turns) >= 0.5);
    assert_eq!(value("ok", Feature::Turns), 0.0);
}

#[test]
fn code_fires_on_fenced_and_unfenced_code_and_programming_requests_but_not_on_prose() {
    fires(
        Feature::Code,
        0.3,
        &[
            "```\nprint('hi')\n```",
            "Why does this fail?\nfn main() {\n    let v = vec![1, 2];\n    println!(\"{}\", v[2]);\n}",
            "def area(r):\n    return 3.14 * r ** 2\n\nprint(area(2))",
            "SELECT name, COUNT(*) FROM users WHERE age > 30 GROUP BY name;",
            "Write a Python function that parses JSON from a REST API.",
        ],
        &[
            "The king returned from the war; nothing escaped him, and he saw everybody.",
            "What is the capital of Australia?",
            "Select the best answer from the list below.",
        ],
    );
}

#[test]
fn code_in_earlier_turns_counts_at_half_strength() {
    let code = "```python\nimport os\nprint(os.getcwd())\n```";
    let turns = [
        Turn { role: TurnRole::User, text: code },
        Turn { role: TurnRole::Assistant, text: "Sure." },
        Turn { role: TurnRole::User, text: "Now make it shorter." },
    ];
    let with_context = value_of(&classify(&view(&turns), &ClassifierConfig::default()), Feature::Code);
    assert_eq!(with_context, CONTEXT_DISCOUNT * value(code, Feature::Code));
    let c = classify(&view(&turns), &ClassifierConfig::default());
    assert!(c.reasons.iter().any(|r| r.starts_with("code in earlier turns")), "{:?}", c.reasons);
}

#[test]
fn math_fires_on_equations_latex_and_symbols_but_not_on_prose() {
    fires(
        Feature::Math,
        0.25,
        &[
            "Solve for x: 3x + 5 = 20",
            "Compute \\int_0^1 x^2 \\, dx.",
            "Show that ∑ 1/n² = π²/6.",
            "Find the eigenvalues of the matrix and the derivative of the polynomial.",
        ],
        &["Tell me a story about a dragon.", "The well-known trade-off is speed versus safety.", "Meet at 3-4pm."],
    );
}

#[test]
fn reasoning_fires_on_design_and_analysis_verbs_and_not_on_chat() {
    fires(
        Feature::Reasoning,
        0.5,
        &[
            "Analyze the failure.",
            "Design a rate limiter.",
            "Optimize this query.",
            "Debug my service.",
            "What are the trade-offs here?",
        ],
        &["Thanks, that was helpful!", "Write a haiku about autumn."],
    );
}

#[test]
fn explicit_asks_fire_on_proofs_comparisons_and_step_by_step_but_not_on_statements() {
    fires(
        Feature::ExplicitAsk,
        0.6,
        &[
            "Think step by step.",
            "Think step-by-step.",
            "Prove it.",
            "Compare Rust and Go.",
            "Explain why the sky is blue.",
            "Justify your answer.",
            "What is the difference between TCP and UDP?",
            "List the pros and cons.",
            "Walk me through it.",
        ],
        &["I took a step back.", "The proofreader left.", "Show me the door."],
    );
}

#[test]
fn constraints_fire_on_requirement_lists_and_not_on_narrative() {
    fires(
        Feature::Constraints,
        0.3,
        &[
            "Requirements:\n- must run offline\n- must not allocate\n- should use at most 2 MB\n- ensure it is \
             deterministic",
            "Write it without recursion. It must be stable, should handle empty input, and make sure you \
             don't use globals.",
        ],
        &["Tell me a story about a dragon who lived in a cave by the sea."],
    );
    // A long passage that says "should" now and then is narrative, not instructions.
    let passage = "The river ran through the valley and the villagers fished in it every morning. ".repeat(20)
        + "They should have known.";
    assert!(value(&passage, Feature::Constraints) < 0.1);
}

#[test]
fn multi_part_fires_on_several_statements_or_questions_and_not_on_one() {
    fires(
        Feature::MultiPart,
        0.5,
        &[
            "Statement 1 | Every group is abelian. Statement 2 | Every ring is a field.",
            "Which are true?\nI. Cats purr.\nII. Dogs bark.\nIII. Fish fly.",
            "What is a monad? Why would I use one?",
            "Consider (i) the cost and (ii) the risk.",
        ],
        &["What is a monad?", "Statement 1 is long."],
    );
}

#[test]
fn tools_fire_when_tools_are_declared_and_not_otherwise() {
    let turns = [Turn { role: TurnRole::User, text: "Book me a flight." }];
    let with = PromptView { tool_count: 3, ..view(&turns) };
    assert!(value_of(&classify(&with, &ClassifierConfig::default()), Feature::Tools) >= 0.5);
    assert_eq!(value_of(&classify(&view(&turns), &ClassifierConfig::default()), Feature::Tools), 0.0);
}

#[test]
fn system_prompt_fires_on_a_long_system_prompt_and_not_on_a_short_one() {
    let turns = [Turn { role: TurnRole::User, text: "Hello" }];
    let long = "You are a support agent for ACME. Follow the policy below.\n".repeat(60);
    let with = PromptView { system: &long, ..view(&turns) };
    assert!(value_of(&classify(&with, &ClassifierConfig::default()), Feature::SystemPrompt) >= 0.5);
    let short = PromptView { system: "Be brief.", ..view(&turns) };
    assert_eq!(value_of(&classify(&short, &ClassifierConfig::default()), Feature::SystemPrompt), 0.0);
}

#[test]
fn short_factual_fires_on_short_wh_questions_and_not_on_long_or_reasoning_ones() {
    fires(
        Feature::ShortFactual,
        1.0,
        &[
            "What is the capital of Australia?",
            "Who wrote Hamlet?",
            "How many legs does a spider have?",
            "capital of France",
            "When did WW2 end?",
        ],
        &[
            "Why is the sky blue?",
            "What are the trade-offs between Raft and Paxos?",
            "How do I design a cache?",
            "Write a poem.",
            "What is X? What is Y?",
            "What is the time complexity of this code? ```\nfor i in range(n):\n    print(i)\n```",
        ],
    );
    let longer = "What is the name of the small town on the northern coast where the author spent the \
                  last summers of his life writing letters?";
    assert!(value(longer, Feature::ShortFactual) < 0.5);
}

#[test]
fn answer_choices_fire_on_a_final_lettered_option_block_and_not_on_an_outline() {
    fires(
        Feature::AnswerChoices,
        1.0,
        &[
            "Which gas is most abundant in air?\nA. Oxygen\nB. Nitrogen\nC. Argon\nD. Helium\nAnswer:",
            "Pick one:\n(A) red\n(B) blue",
        ],
        &[
            "Outline:\nA. Introduction\nB. Methods\nThen write the full paper with citations and figures.",
            "A. Smith wrote this.",
        ],
    );
}

#[test]
fn answer_options_do_not_count_as_part_of_the_question() {
    let with_options = "Which is largest?\nA. 10 + 20 = 30\nB. 2^10\nC. 1000 - 1\nD. 3 * 300\nAnswer:";
    assert_eq!(value(with_options, Feature::Math), 0.0);
    assert_eq!(value(with_options, Feature::ShortFactual), 1.0);
}

#[test]
fn non_english_fires_on_other_scripts_and_languages_and_not_on_english() {
    fires(
        Feature::NonEnglish,
        0.3,
        &[
            "请解释一下分布式系统中的一致性协议。",
            "Объясни, пожалуйста, как работает этот алгоритм.",
            "Quelle est la capitale du Canada ? Je voudrais une réponse avec des détails pour les enfants.",
            "Erkläre mir bitte, wie das funktioniert und warum es nicht mit einer Datenbank geht.",
        ],
        &["Explain how a hash map handles collisions.", "The café serves crème brûlée."],
    );
    // A few Greek letters in English are maths symbols, not a language.
    assert_eq!(value("Let α + β = π and find σ.", Feature::NonEnglish), 0.0);
    assert!(value("Let α + β = π and find σ.", Feature::Math) > 0.0);
}

#[test]
fn reasons_are_ordered_by_absolute_contribution_and_few() {
    for text in HARD.iter().chain(EASY) {
        let c = user(text);
        assert!(c.reasons.len() <= MAX_REASONS);
        let mut contributions: Vec<f64> =
            c.features.iter().map(|f| f.contribution).filter(|x| x.abs() >= MIN_REASON_CONTRIBUTION).collect();
        contributions.sort_by(|a, b| b.abs().total_cmp(&a.abs()));
        contributions.truncate(MAX_REASONS);
        assert_eq!(c.reasons.len(), contributions.len(), "{:?}", c.reasons);
        for (reason, x) in c.reasons.iter().zip(&contributions) {
            let mut suffix = String::from(" (");
            write_signed_2dp(&mut suffix, *x);
            suffix.push(')');
            assert!(reason.ends_with(&suffix), "{reason:?} should end with {suffix:?}");
        }
    }
    let c = user("What is the capital of Australia?");
    assert_eq!(c.reasons.first().map(String::as_str), Some("short factual question (-1.00)"));
}

#[test]
fn contributions_are_written_with_a_sign_and_two_decimals() {
    let fmt = |x| {
        let mut s = String::new();
        write_signed_2dp(&mut s, x);
        s
    };
    assert_eq!(fmt(0.214), "+0.21");
    assert_eq!(fmt(-0.155), "-0.16");
    assert_eq!(fmt(1.0), "+1.00");
    assert_eq!(fmt(-0.001), "+0.00");
    assert_eq!(fmt(12.345), "+12.35");
}

#[test]
fn the_score_is_finite_and_within_bounds_for_hostile_input() {
    let one_char = "a".repeat(1 << 20);
    let euros = "€".repeat(400_000);
    let emoji = "😀🔥🚀".repeat(1000);
    let nul = "\0".repeat(10_000);
    let spaces = " \t\n\r".repeat(10_000);
    let garbage: String = (0u32..5000).filter_map(|i| char::from_u32((i * 7919) % 0x11_0000)).collect();
    let punctuation = "`\\{}()[];:=+-*/^<>!?.|&#$%'\"".repeat(2000);
    let texts = ["", one_char.as_str(), &euros, &emoji, &nul, &spaces, &garbage, &punctuation];
    let configs = [
        ClassifierConfig::default(),
        ClassifierConfig::default().with_bias(MAX_ABS_PARAMETER).unwrap(),
        Feature::ALL.iter().fold(ClassifierConfig::default().with_bias(-MAX_ABS_PARAMETER).unwrap(), |c, f| {
            c.with_weight(*f, -MAX_ABS_PARAMETER).unwrap()
        }),
    ];
    for text in texts {
        let turns = [Turn { role: TurnRole::User, text }, Turn { role: TurnRole::Tool, text }];
        let prompts = [
            view(&turns),
            PromptView { system: text, turns: &turns, tool_count: usize::MAX, tokens: u32::MAX },
            PromptView { system: "", turns: &[], tool_count: 0, tokens: 0 },
        ];
        for prompt in &prompts {
            for config in &configs {
                let c = classify(prompt, config);
                assert!(c.score.is_finite() && (0.0..=1.0).contains(&c.score), "{}", c.score);
                for fv in &c.features {
                    assert!(fv.value.is_finite() && (0.0..=1.0).contains(&fv.value), "{fv:?}");
                    assert!(fv.contribution.is_finite(), "{fv:?}");
                }
            }
        }
    }
}

#[test]
fn random_text_split_across_turns_never_panics() {
    // Deterministic xorshift; pieces chosen to exercise every scanner path.
    let pieces = [
        "a",
        "Z",
        "7",
        "3.5",
        "-",
        "+",
        "=",
        "^",
        "/",
        "*",
        "(",
        ")",
        "{",
        "}",
        ";",
        "`",
        "```",
        "\\frac",
        "\n",
        " ",
        "\t",
        "?",
        ".",
        "!",
        "'",
        "’t",
        "don",
        "by",
        "step",
        "A.",
        "B)",
        "(C)",
        "I.",
        "II.",
        "é",
        "€",
        "😀",
        "α",
        "中文",
        "Жж",
        "\0",
        "Statement",
        "explain",
        "how",
        "#include",
        "SELECT",
        "::",
    ];
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..300 {
        let mut texts: Vec<String> = Vec::new();
        for _ in 0..(next() % 4 + 1) {
            let len = next() % 40;
            texts.push((0..len).map(|_| pieces[(next() % pieces.len() as u64) as usize]).collect());
        }
        let roles = [TurnRole::User, TurnRole::Assistant, TurnRole::Tool];
        let turns: Vec<Turn<'_>> = texts
            .iter()
            .enumerate()
            .map(|(i, text)| Turn { role: roles[(i + (next() % 3) as usize) % 3], text })
            .collect();
        let c = classify(&view(&turns), &ClassifierConfig::default());
        assert!(c.score.is_finite() && (0.0..=1.0).contains(&c.score));
    }
    // A turn that starts with "-" right after a turn that ends with a number.
    let turns = [
        Turn { role: TurnRole::User, text: "-1" },
        Turn { role: TurnRole::Assistant, text: "2" },
        Turn { role: TurnRole::User, text: "ok" },
    ];
    let c = classify(&view(&turns), &ClassifierConfig::default());
    assert!(c.score.is_finite());
}

#[test]
fn a_question_at_the_end_of_a_very_long_prompt_is_still_seen() {
    let text = "lorem ipsum dolor sit amet ".repeat(20_000) + "Now prove that the algorithm terminates.";
    assert!(value(&text, Feature::ExplicitAsk) > 0.5);
}

#[test]
fn config_overrides_change_the_score() {
    let text = HARD[1];
    let turns = [Turn { role: TurnRole::User, text }];
    let default = classify(&view(&turns), &ClassifierConfig::default()).score;
    let raw: RawClassifierConfig = serde_json::from_str(r#"{"bias": -3.0, "weights": {"code": 0.0}}"#).unwrap();
    let config = ClassifierConfig::try_from(raw).unwrap();
    assert_eq!(config.bias(), -3.0);
    assert_eq!(config.weight(Feature::Code), 0.0);
    assert_eq!(config.weight(Feature::Math), Feature::Math.default_weight());
    let overridden = classify(&view(&turns), &config).score;
    assert!(overridden < default, "{overridden} should be below {default}");
    let c = classify(&view(&turns), &config);
    assert!(!c.reasons.iter().any(|r| r.starts_with("code")), "{:?}", c.reasons);
}

#[test]
fn an_empty_override_is_the_default_config() {
    let raw: RawClassifierConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(ClassifierConfig::try_from(raw).unwrap(), ClassifierConfig::default());
    let full = RawClassifierConfig::from(&ClassifierConfig::default());
    assert_eq!(full.weights.len(), Feature::COUNT);
    let json = serde_json::to_string(&full).unwrap();
    let back: RawClassifierConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(ClassifierConfig::try_from(back).unwrap(), ClassifierConfig::default());
}

#[test]
fn unknown_weight_names_are_rejected_with_their_path() {
    let raw: RawClassifierConfig = serde_json::from_str(r#"{"weights": {"code": 1.0, "cde": 0.5}}"#).unwrap();
    let err = ClassifierConfig::try_from(raw).unwrap_err();
    assert_eq!(err.path, "weights.cde");
    assert!(err.message.contains("unknown feature"), "{err}");
    assert!(err.to_string().starts_with("weights.cde: "), "{err}");
}

#[test]
fn unknown_fields_are_refused() {
    assert!(serde_json::from_str::<RawClassifierConfig>(r#"{"bais": 1.0}"#).is_err());
    assert!(serde_json::from_str::<RawClassifierConfig>(r#"{"weights": {"code": "high"}}"#).is_err());
}

#[test]
fn non_finite_numbers_are_rejected_with_their_path() {
    let bias = RawClassifierConfig { bias: Some(f64::NAN), ..Default::default() };
    assert_eq!(ClassifierConfig::try_from(bias).unwrap_err().path, "bias");
    let mut weights = BTreeMap::new();
    weights.insert("math".to_owned(), f64::INFINITY);
    let weight = RawClassifierConfig { bias: None, weights, ..RawClassifierConfig::default() };
    let err = ClassifierConfig::try_from(weight).unwrap_err();
    assert_eq!(err, ClassifierConfigError { path: "weights.math".into(), message: "must be a finite number".into() });
    let mut weights = BTreeMap::new();
    weights.insert("tools".to_owned(), 1e6);
    let huge = RawClassifierConfig { bias: None, weights, ..RawClassifierConfig::default() };
    assert_eq!(ClassifierConfig::try_from(huge).unwrap_err().path, "weights.tools");
    assert!(ClassifierConfig::default().with_weight(Feature::Code, f64::NEG_INFINITY).is_err());
}

#[test]
fn every_keyword_is_found_whatever_its_case() {
    for (k, keyword) in KEYWORDS.iter().enumerate() {
        let word = keyword.0;
        for variant in
            [word.to_owned(), word.to_ascii_uppercase(), format!("{}{}", &word[..1].to_uppercase(), &word[1..])]
        {
            // At the end of the text (no 16-byte load) and in the middle of it.
            for text in [variant.clone(), format!("{variant} and then some more words")] {
                let found = lookup(text.as_bytes(), 0, variant.len());
                assert!(std::ptr::eq(found, &KEYWORDS[k]), "{variant:?} in {text:?}");
            }
        }
    }
    assert_eq!(lookup(b"designs", 0, 7).1, Kw::None);
    assert_eq!(lookup(b"desig", 0, 5).1, Kw::None);
    assert_eq!(lookup(b"x_1", 0, 3).1, Kw::None);
}

#[test]
fn the_fast_word_scanner_agrees_with_the_byte_loop() {
    let slow = |t: &[u8], mut i: usize| {
        while i < t.len() && WORD_BYTE[usize::from(t[i])] {
            i += 1;
        }
        i
    };
    let text = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789 x1_y2 é€😀 \0\x7f@[`{~ a";
    let bytes = text.as_bytes();
    for start in 0..bytes.len() {
        assert_eq!(word_end(bytes, start), slow(bytes, start), "at {start}");
    }
    for b in 0..=255u8 {
        let t = [b'a', b'b', b, b'c', b'd', b'e', b'f', b'g', b'h', b'i', b'j'];
        assert_eq!(word_end(&t, 1), slow(&t, 1), "byte {b:#x}");
    }
}

#[test]
fn the_logistic_matches_the_standard_library() {
    for i in -4000..=4000 {
        let x = f64::from(i) / 100.0;
        let expected = 1.0 / (1.0 + (-x).exp());
        assert!((logistic(x) - expected).abs() < 1e-14, "{x}");
    }
    assert_eq!(logistic(f64::NAN), 0.5);
    assert_eq!(logistic(f64::INFINITY), logistic(40.0));
    assert!(logistic(-1e300) >= 0.0);
}

#[test]
fn log2_is_exact_at_powers_of_two_and_monotone() {
    for k in 0..40 {
        assert_eq!(log2(f64::from(2u32).powi(k)), f64::from(k));
    }
    let mut last = 0.0;
    for x in 1..5000 {
        let y = log2(f64::from(x));
        assert!(y >= last);
        last = y;
    }
}
