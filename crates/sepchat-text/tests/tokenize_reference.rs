//! The tokenizer built from GGUF metadata must give exactly llama.cpp's ids (`llama-tokenize --ids`,
//! special tokens parsed) for every case of `shared/reference/tokenize.json`.

mod common;

#[test]
fn ids_match_llama_cpp_reference() {
    let tokenizer = common::default_tokenizer();
    let reference = common::reference_json("tokenize.json");
    let cases = reference["cases"].as_array().expect("tokenize.json has a `cases` array");
    assert!(!cases.is_empty(), "tokenize.json has no cases");

    let mut mismatches = Vec::new();
    for case in cases {
        let text = case["text"].as_str().expect("case has a `text` string");
        let expected: Vec<u32> = case["ids"]
            .as_array()
            .expect("case has an `ids` array")
            .iter()
            .map(|id| id.as_u64().and_then(|id| u32::try_from(id).ok()).expect("id is a u32"))
            .collect();
        let actual = tokenizer.encode(text).expect("encode succeeds");
        if actual != expected {
            mismatches.push(format!("text {text:?}\n  expected {expected:?}\n  actual   {actual:?}"));
        }
        // The ids must also give the text back.
        assert_eq!(tokenizer.decode(&actual, false).expect("decode succeeds"), text);
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} cases differ from llama.cpp:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
}
