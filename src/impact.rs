//! How badly a segment hurt the user: failure, confusion, abandonment.
//!
//! The Python system matched substrings of the description, so "left" fired on "left-click" and
//! "500" on "1500". Here the description is tokenized (lowercase, contractions expanded:
//! "didn't" -> "did not") and the phrases of [`RULES`] must match whole tokens, in order, inside
//! one clause. Hyphenated words stay one token, so `left` never matches `left-click` and
//! `error*` never matches `error-free`.
//!
//! Phrase syntax, one space between tokens:
//! - `word` matches that token exactly; `word*` any token starting with `word` followed by
//!   letters only (`crash*` = crash, crashed, crashes, crashing; not `crash-test`);
//! - `a|b|c` any one of the alternatives;
//! - `<5xx>` / `<4xx>` a three-digit HTTP status token (`500`, `504`; never `1500`);
//! - `~N` skips up to N tokens (`left ~2 page` = "left the page", "left the checkout page", but
//!   not "the left side of the page").
//!
//! Negation: a match is ignored when one of [`NEGATORS`] appears in the [`NEGATION_WINDOW`]
//! tokens before it in the same clause ("completed the form without any errors", "no crash").
//! Clauses end at `. , ; : ! ? ( )` and dashes and at "but", "however", "although", "though".
//! Limits, accepted for simplicity: no double negation ("not without errors" reads as no
//! error), no scope beyond the window ("none of the five retries showed an error" is still a
//! failure), and no sense disambiguation beyond the phrase lists.
//!
//! Structured metadata, when present, decides too (see [`METADATA_SIGNALS`]): a recorder's counter
//! is better evidence than prose. A field that is absent, zero, false, null or of another type is
//! no evidence either way.

use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

/// What each kind of harm adds to a segment's impact; the sum is capped at 1.0.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImpactWeights {
    pub failure: f64,
    pub confusion: f64,
    pub abandonment: f64,
}

impl Default for ImpactWeights {
    fn default() -> Self {
        Self {
            failure: 0.4,
            confusion: 0.3,
            abandonment: 0.2,
        }
    }
}

/// A segment's impact and the kinds of harm found in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Impact {
    /// Sum of the weights of the kinds found, in [0, 1].
    pub score: f64,
    pub failure: bool,
    pub confusion: bool,
    pub abandonment: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Category {
    /// Something broke: errors, crashes, timeouts, actions that did nothing.
    Failure,
    /// The user could not work out what to do: rage clicks, repeated attempts, hesitation.
    Confusion,
    /// The user left or gave up on what they were doing.
    Abandonment,
}

/// The rules, one row per category. Keep phrases specific: a word that is ordinary in
/// descriptions of normal use ("left", "closed", "stuck" on its own for failure) belongs here only
/// inside a phrase that pins its harmful sense.
pub const RULES: &[(Category, &[&str])] = &[
    (
        Category::Failure,
        &[
            "error*",
            "exception*",
            "crash*",
            "froze",
            "freez*",
            "frozen",
            "fail*",
            "broken",
            "bug*",
            "timeout*",
            "timed out",
            "times out",
            "time out",
            "unresponsive",
            "not work*",
            "not load*",
            "not respond*",
            "not open*",
            "not submit*",
            "not sav*",
            "not update*",
            "not accept*",
            "nothing happen*",
            "does nothing",
            "it|button|link|control did nothing",
            "did nothing when",
            "had|has no effect",
            "never arriv*",
            "never load*",
            "never appear*",
            "never sav*",
            "never came",
            "never finish* loading",
            "went wrong",
            "reject*",
            "invalid",
            "blank page|screen|pdf|pdfs|file|files|document",
            "white screen",
            "stuck loading",
            "stuck on loading|a|the spinner",
            "endless|infinite spinner|loading|loop",
            "spinner kept spinning",
            "redirect loop",
            "took over ~2 seconds|minutes",
            "slow to load",
            "slow load*",
            "very slow",
            "no sound|audio",
            "page not found",
            "http|status|code <5xx>|<4xx>",
            "returned|return|returns|got a|an <5xx>",
            "returned|return|returns <5xx>",
            "<5xx> internal|response|gateway",
            "unsaved work",
            "data loss",
            "lost|losing their|the|all work|draft|data|changes|progress",
            "work|draft|data|changes|progress was|were lost|gone",
            "charged twice",
            "force quit",
            "ran out of memory",
            "unexpected*",
        ],
    ),
    (
        Category::Confusion,
        &[
            "confus*",
            "rage click*",
            "rage-click*",
            "dead click*",
            "dead-click*",
            "misclick*",
            "mis-click*",
            "click*|tap*|press* ~4 repeatedly",
            "repeatedly click*|tap*|press*|tried|retyp*",
            "click*|tap*|press*|tried|retyp*|check* ~4 several|multiple|many times",
            "again and again",
            "over and over",
            "back and forth",
            "tried again",
            "retried",
            "retry*",
            "retyp*",
            "re-enter*",
            "hesitat*",
            "unsure",
            "unclear",
            "puzzl*",
            "struggl*",
            "frustrat*",
            "seemed|felt|looked|got stuck",
            "seemed|looked|got lost",
            "not understand*",
            "not find",
            "not figure out",
            "unable to find",
            "look* for it|them|the",
            "tapped|clicked around",
            "scroll* up and down",
            "wrong field|button|tab|page|option",
            "no results",
            "barely read",
        ],
    ),
    (
        Category::Abandonment,
        &[
            "abandon*",
            "left|leaving|leave|leaves|exited|exiting|exit ~2 page|site|website|app|checkout|cart|flow|form|signup|onboarding",
            "left|leaving|leave|leaves without",
            "gave up",
            "give|gives|giving up",
            "closed|closing|close|closes the|their tab|browser|app",
            "navigated away",
            "bounced",
            "dropped off",
            "quit",
            "without completing|finishing|purchasing|paying|saving|submitting|buying",
            "not complet*",
            "never complet*",
            "cancel* ~2 subscription|order|purchase",
        ],
    ),
];

/// Words that, just before a match, turn it off.
pub const NEGATORS: &[&str] = &[
    "no", "not", "never", "without", "none", "nothing", "nor", "neither", "zero",
];

/// How many tokens before a match are searched for a negator.
pub const NEGATION_WINDOW: usize = 4;

/// Words that end a clause, like punctuation does.
const CLAUSE_WORDS: &[&str] = &["but", "however", "although", "though", "whereas", "except"];

/// The metadata fields read, the category each one signals, and how: a number > 0 (or a numeric
/// string), `true`, or a non-empty array. `http_status`/`status_code` signal failure at >= 500.
pub const METADATA_SIGNALS: &[(&str, Category)] = &[
    ("errors", Category::Failure),
    ("error_count", Category::Failure),
    ("console_errors", Category::Failure),
    ("console_error_count", Category::Failure),
    ("crashed", Category::Failure),
    ("rage_clicks", Category::Confusion),
    ("rage_click_count", Category::Confusion),
    ("dead_clicks", Category::Confusion),
    ("dead_click_count", Category::Confusion),
    ("abandoned", Category::Abandonment),
    ("exited", Category::Abandonment),
];

/// Impact of one segment from its description and its parsed metadata.
pub fn impact(content: &str, metadata: &serde_json::Value, w: &ImpactWeights) -> Impact {
    let tokens = tokenize(content);
    let mut found = [false; 3];
    for (cat, phrases) in COMPILED.iter() {
        let slot = &mut found[*cat as usize];
        if !*slot {
            *slot = phrases.iter().any(|p| phrase_matches(p, &tokens));
        }
    }
    for (cat, yes) in metadata_categories(metadata) {
        found[cat as usize] |= yes;
    }
    let [failure, confusion, abandonment] = found;
    let sum = [
        (failure, w.failure),
        (confusion, w.confusion),
        (abandonment, w.abandonment),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, wt)| if wt.is_finite() { *wt } else { 0.0 })
    .sum::<f64>();
    Impact {
        score: sum.clamp(0.0, 1.0),
        failure,
        confusion,
        abandonment,
    }
}

fn metadata_categories(metadata: &serde_json::Value) -> Vec<(Category, bool)> {
    let Some(obj) = metadata.as_object() else {
        return Vec::new();
    };
    let mut out: Vec<(Category, bool)> = METADATA_SIGNALS
        .iter()
        .filter_map(|(field, cat)| obj.get(*field).map(|v| (*cat, signals(v))))
        .collect();
    for field in ["http_status", "status_code"] {
        if let Some(code) = obj.get(field).and_then(number_of) {
            out.push((Category::Failure, code >= 500.0));
        }
    }
    out
}

/// True for evidence of something happening: a positive count, `true`, a non-empty list.
fn signals(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::Array(a) => !a.is_empty(),
        other => number_of(other).is_some_and(|n| n > 0.0),
    }
}

fn number_of(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|x| x.is_finite())
}

/// A lowercase word and the clause it belongs to.
#[derive(Debug, PartialEq)]
struct Token {
    text: String,
    clause: usize,
}

/// Lowercases, splits into words (keeping inner hyphens, apostrophes and digit groups like
/// `1.5`), expands "n't", and numbers clauses.
fn tokenize(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text
        .chars()
        .flat_map(char::to_lowercase)
        .map(|c| {
            if matches!(c, '\u{2019}' | '\u{2018}') {
                '\''
            } else {
                c
            }
        })
        .collect();
    let mut tokens = Vec::new();
    let mut clause = 0;
    let mut word = String::new();
    let is_word = |c: char| c.is_alphanumeric();
    for (i, &c) in chars.iter().enumerate() {
        let prev = i.checked_sub(1).map(|j| chars[j]);
        let next = chars.get(i + 1).copied();
        let joins = |pred: fn(char) -> bool| {
            prev.is_some_and(pred) && next.is_some_and(pred) && !word.is_empty()
        };
        if is_word(c)
            || (matches!(c, '-' | '\'' | '_') && joins(char::is_alphanumeric))
            || (matches!(c, '.' | ',') && joins(|c: char| c.is_ascii_digit()))
        {
            word.push(c);
            continue;
        }
        push_word(&mut tokens, &mut word, &mut clause);
        if matches!(
            c,
            '.' | ','
                | ';'
                | ':'
                | '!'
                | '?'
                | '('
                | ')'
                | '['
                | ']'
                | '-'
                | '\u{2013}'
                | '\u{2014}'
        ) {
            clause += 1;
        }
    }
    push_word(&mut tokens, &mut word, &mut clause);
    tokens
}

fn push_word(tokens: &mut Vec<Token>, word: &mut String, clause: &mut usize) {
    if word.is_empty() {
        return;
    }
    let w = std::mem::take(word);
    if CLAUSE_WORDS.contains(&w.as_str()) {
        *clause += 1;
        return;
    }
    let c = *clause;
    let mut push = |s: &str| {
        tokens.push(Token {
            text: s.to_string(),
            clause: c,
        })
    };
    let irregular = match w.as_str() {
        "can't" | "cant" | "cannot" => Some("can"),
        "won't" => Some("will"),
        "shan't" => Some("shall"),
        _ => None,
    };
    if let Some(stem) = irregular {
        push(stem);
        push("not");
    } else if let Some(stem) = w.strip_suffix("n't") {
        push(stem);
        push("not");
    } else if let Some(stem) = [
        "dont", "doesnt", "didnt", "isnt", "wasnt", "werent", "arent", "couldnt", "wouldnt",
        "shouldnt", "hasnt", "havent", "hadnt",
    ]
    .contains(&w.as_str())
    .then(|| &w[..w.len() - 2])
    {
        push(stem);
        push("not");
    } else {
        push(&w);
    }
}

/// One position of a phrase.
#[derive(Debug)]
enum Pat {
    /// Any of these alternatives matches the token.
    Alts(Vec<Alt>),
    /// Zero to this many arbitrary tokens.
    Gap(usize),
}

#[derive(Debug)]
enum Alt {
    Exact(String),
    Stem(String),
    /// HTTP status class: the leading digit of a three-digit code.
    Status(char),
}

impl Alt {
    fn matches(&self, t: &str) -> bool {
        match self {
            Alt::Exact(w) => t == w,
            Alt::Stem(s) => t
                .strip_prefix(s.as_str())
                .is_some_and(|rest| rest.chars().all(|c| c.is_alphabetic() || c == '\'')),
            Alt::Status(d) => {
                t.len() == 3 && t.starts_with(*d) && t.chars().all(|c| c.is_ascii_digit())
            }
        }
    }
}

static COMPILED: LazyLock<Vec<(Category, Vec<Vec<Pat>>)>> = LazyLock::new(|| {
    RULES
        .iter()
        .map(|(cat, phrases)| (*cat, phrases.iter().map(|p| compile(p)).collect()))
        .collect()
});

fn compile(phrase: &str) -> Vec<Pat> {
    phrase
        .split_whitespace()
        .map(|part| {
            if let Some(n) = part.strip_prefix('~').and_then(|n| n.parse().ok()) {
                return Pat::Gap(n);
            }
            Pat::Alts(
                part.split('|')
                    .map(|a| match a {
                        "<5xx>" => Alt::Status('5'),
                        "<4xx>" => Alt::Status('4'),
                        _ => match a.strip_suffix('*') {
                            Some(stem) => Alt::Stem(stem.to_string()),
                            None => Alt::Exact(a.to_string()),
                        },
                    })
                    .collect(),
            )
        })
        .collect()
}

/// True when the phrase matches somewhere in `tokens`, within one clause, not negated.
fn phrase_matches(phrase: &[Pat], tokens: &[Token]) -> bool {
    (0..tokens.len()).any(|start| {
        match_at(phrase, tokens, start, tokens[start].clause) && !negated(tokens, start)
    })
}

fn match_at(phrase: &[Pat], tokens: &[Token], at: usize, clause: usize) -> bool {
    let Some((first, rest)) = phrase.split_first() else {
        return true;
    };
    match first {
        Pat::Gap(max) => (0..=*max).any(|skip| {
            let at = at + skip;
            (at == tokens.len() && rest.is_empty())
                || (at < tokens.len()
                    && tokens[at].clause == clause
                    && match_at(rest, tokens, at, clause))
        }),
        Pat::Alts(alts) => tokens.get(at).is_some_and(|t| {
            t.clause == clause
                && alts.iter().any(|a| a.matches(&t.text))
                && match_at(rest, tokens, at + 1, clause)
        }),
    }
}

fn negated(tokens: &[Token], start: usize) -> bool {
    let clause = tokens[start].clause;
    tokens[start.saturating_sub(NEGATION_WINDOW)..start]
        .iter()
        .any(|t| t.clause == clause && NEGATORS.contains(&t.text.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(s: &str) -> Impact {
        impact(s, &json!({}), &ImpactWeights::default())
    }

    fn flags(i: Impact) -> (bool, bool, bool) {
        (i.failure, i.confusion, i.abandonment)
    }

    #[test]
    fn every_phrase_compiles_to_something() {
        for (_, phrases) in COMPILED.iter() {
            for p in phrases {
                assert!(!p.is_empty());
                assert!(
                    !matches!(p.first(), Some(Pat::Gap(_))),
                    "a phrase may not start with ~N"
                );
            }
        }
    }

    #[test]
    fn real_descriptions() {
        let cases = [
            (
                "User clicked the Pay button repeatedly but nothing happened",
                (true, true, false),
            ),
            (
                "The CSV export timed out with a 504 Gateway Timeout and the user left the page",
                (true, false, true),
            ),
            (
                "User requested a password reset and waited, but the email never arrived",
                (true, false, false),
            ),
            (
                "User seemed confused by the pricing toggle and went back and forth",
                (false, true, false),
            ),
            (
                "User browsed the pricing page and scrolled through plans",
                (false, false, false),
            ),
            (
                "The dashboard didn't load; user refreshed twice and then closed the tab",
                (true, false, true),
            ),
            (
                "The app crashed with a white screen after upload",
                (true, false, false),
            ),
            ("User gave up on the signup form", (false, false, true)),
            (
                "User abandoned the cart after the coupon was rejected",
                (true, false, true),
            ),
        ];
        for (s, want) in cases {
            assert_eq!(flags(text(s)), want, "{s}");
        }
    }

    #[test]
    fn whole_words_only() {
        // The Python system's false positives.
        assert!(!text("User used left-click to select a row").abandonment);
        assert!(!text("User left-clicked the chart legend").abandonment);
        assert!(!text("User changed the quantity to 1500 units").failure);
        assert!(!text("Bulk delete left most of the selected items in place").abandonment);
        assert!(!text("The import was error-free").failure);
        // ... and the true positives next to them.
        assert!(text("The server returned a 500").failure);
        assert!(text("The server answered with HTTP 503").failure);
        assert!(text("Export got a 502 from the gateway").failure);
        assert!(text("User saw a 404 error page").failure);
        assert!(text("User left the checkout page without paying").abandonment);
        assert!(text("User left without saving").abandonment);
    }

    #[test]
    fn negation_turns_a_match_off_within_its_clause() {
        assert!(!text("User completed the form without any errors").failure);
        assert!(!text("No error was shown and the order went through").failure);
        assert!(!text("The upload did not fail this time").failure);
        assert!(!text("User did not abandon the cart").abandonment);
        // The negator belongs to another clause: the match stands.
        assert!(text("No warning was shown, but the page crashed").failure);
        assert!(text("Nothing looked odd. Then an error appeared").failure);
        // A negator inside the phrase is part of it, not a negation of it.
        assert!(text("The button didn't work").failure);
        assert!(text("The reset email never arrived").failure);
        assert!(text("The button doesn’t respond to taps").failure);
    }

    #[test]
    fn phrases_stay_inside_a_clause() {
        assert!(!text("User left. The page reloaded").abandonment);
        assert!(text("User left the page").abandonment);
    }

    #[test]
    fn gap_allows_up_to_two_words() {
        assert!(text("User left the checkout page").abandonment);
        assert!(text("User left the pricing page").abandonment);
        // Three words apart is beyond the gap: a documented limit, kept for the line below.
        assert!(!text("User left the pricing comparison page").abandonment);
        assert!(!text("The left side of the page shows filters").abandonment);
    }

    #[test]
    fn metadata_signals_count() {
        let w = ImpactWeights::default();
        let quiet = "User moved through the settings";
        assert_eq!(impact(quiet, &json!({}), &w).score, 0.0);
        let i = impact(quiet, &json!({"error_count": 2}), &w);
        assert!(i.failure && !i.confusion);
        let i = impact(quiet, &json!({"rage_clicks": "4", "exited": true}), &w);
        assert!(i.confusion && i.abandonment && !i.failure);
        let i = impact(
            quiet,
            &json!({"errors": ["TypeError"], "http_status": 200}),
            &w,
        );
        assert!(i.failure);
        assert!(impact(quiet, &json!({"status_code": 502}), &w).failure);
        // Zero, false, empty, null and junk are no evidence.
        let none = json!({"errors": [], "rage_clicks": 0, "exited": false, "dead_clicks": null,
                          "crashed": "maybe", "http_status": 404});
        assert_eq!(impact(quiet, &none, &w), Impact::default());
        // Metadata that is not an object is ignored, not an error.
        assert_eq!(impact(quiet, &json!("text"), &w), Impact::default());
    }

    #[test]
    fn score_sums_weights_and_caps_at_one() {
        let all = "The page crashed, the user was confused and gave up";
        let i = text(all);
        assert!(i.failure && i.confusion && i.abandonment);
        assert!((i.score - 0.9).abs() < 1e-12);
        let heavy = ImpactWeights {
            failure: 0.8,
            confusion: 0.5,
            abandonment: 0.5,
        };
        assert_eq!(impact(all, &json!({}), &heavy).score, 1.0);
        assert!((text("The export failed").score - 0.4).abs() < 1e-12);
        assert!(
            text("The export failed").score > 0.3,
            "a failure alone is high impact"
        );
        assert!(
            text("User was confused").score <= 0.3,
            "confusion alone is not"
        );
    }

    #[test]
    fn tokenizer_expands_contractions_and_keeps_compounds() {
        let words: Vec<String> = tokenize("It didn't load; can't re-enter 1,500 items")
            .into_iter()
            .map(|t| t.text)
            .collect();
        assert_eq!(
            words,
            [
                "it", "did", "not", "load", "can", "not", "re-enter", "1,500", "items"
            ]
        );
        let t = tokenize("a, b but c");
        assert_eq!(t.iter().map(|t| t.clause).collect::<Vec<_>>(), [0, 1, 2]);
    }
}
