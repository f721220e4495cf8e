//! Turning what the user typed into an FTS5 query that cannot be a syntax error.

/// Marks the start of a matched term inside [`crate::SearchHit::snippet`] (STX: a control character that chat text
/// practically never holds, so the UI can split on it without ambiguity).
pub const SNIPPET_MATCH_START: char = '\u{2}';
/// Marks the end of a matched term inside [`crate::SearchHit::snippet`] (ETX).
pub const SNIPPET_MATCH_END: char = '\u{3}';

/// Builds an FTS5 MATCH expression from free text: every whitespace-separated term becomes a quoted string (inner
/// `"` doubled) followed by `*`, so the terms are ANDed prefix matches ("capit fra" finds "capital of France", as a
/// search-as-you-type box should) and `"`, `AND`, `OR`, `NOT`, `NEAR(`, `*`, `^`, `:` and parentheses are plain text,
/// never operators. Terms without a letter or digit are dropped: the tokenizer finds no word in them, so they could
/// only be empty phrases (which FTS5 ignores); input made only of such terms gives `None`, and the store answers
/// "no hits" without asking SQLite.
pub(crate) fn fts_match_expression(input: &str) -> Option<String> {
    let terms: Vec<String> = input
        .split_whitespace()
        .filter(|term| term.chars().any(char::is_alphanumeric))
        .map(|term| format!("\"{}\"*", term.replace('"', "\"\"")))
        .collect();
    if terms.is_empty() {
        None
    } else {
        Some(terms.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_are_quoted_prefixes() {
        assert_eq!(fts_match_expression("capit  fra").as_deref(), Some(r#""capit"* "fra"*"#));
        assert_eq!(fts_match_expression(r#"say "hi""#).as_deref(), Some(r#""say"* """hi"""*"#));
        assert_eq!(fts_match_expression("a AND OR b").as_deref(), Some(r#""a"* "AND"* "OR"* "b"*"#));
    }

    #[test]
    fn nothing_searchable_gives_none() {
        assert_eq!(fts_match_expression(""), None);
        assert_eq!(fts_match_expression("   "), None);
        assert_eq!(fts_match_expression(r#"" * ( -"#), None);
    }
}
