//! `schemas/EPOCHS.md` is the contract for reward oracles: its leaf column table is the code's
//! `device_summary` schema, its test vectors are what the code makes, and a verifier written from
//! the page alone (`scripts/verify_epoch.py`) accepts them and refuses tampered proofs.

use std::process::Command;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use arrow::datatypes::DataType;
use hexpulse_rewards::merkle;
use hexpulse_schemas::tables::device_summary_schema;
use hexpulse_testkit::testenv;
use serde_json::{Value, json};

fn page() -> String {
    std::fs::read_to_string(testenv::repo_root().join("schemas/EPOCHS.md")).expect("EPOCHS.md")
}

/// The JSON block of the "Test vectors" section.
fn vectors(page: &str) -> Value {
    let after = page
        .split("## Test vectors")
        .nth(1)
        .expect("a vectors section");
    let start = after.find("```json\n").expect("a json block") + "```json\n".len();
    let end = start + after[start..].find("\n```").expect("the block's end");
    serde_json::from_str(&after[start..end]).expect("the vectors parse")
}

fn type_name(t: &DataType) -> &'static str {
    match t {
        DataType::Int64 => "int64",
        DataType::UInt64 => "uint64",
        DataType::UInt32 => "uint32",
        DataType::Float64 => "float64",
        DataType::Utf8 => "utf8",
        other => panic!("no leaf encoding for {other}"),
    }
}

#[test]
fn the_leaf_column_table_is_the_device_summary_schema() {
    let page = page();
    let section = page.split("### Leaf columns").nth(1).expect("the section");
    let listed: Vec<(String, String, bool)> = section
        .lines()
        .skip_while(|l| !l.starts_with("| 1 |"))
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (
                cells[2].trim_matches('`').to_string(),
                cells[3].to_string(),
                cells[4] == "yes",
            )
        })
        .collect();
    let schema = device_summary_schema();
    let code: Vec<(String, String, bool)> = schema
        .fields()
        .iter()
        .map(|f| {
            (
                f.name().clone(),
                type_name(f.data_type()).to_string(),
                f.is_nullable(),
            )
        })
        .collect();
    assert_eq!(listed, code);
}

/// The rows as a `device_summary` batch (a missing or null value in a column that may not be
/// null fails here).
fn batch_of(rows: &[&Value]) -> RecordBatch {
    let schema = device_summary_schema();
    let cols: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| {
            let vals = rows.iter().map(|r| &r[f.name()]);
            let col: ArrayRef = match f.data_type() {
                DataType::Int64 => Arc::new(vals.map(Value::as_i64).collect::<Int64Array>()),
                DataType::UInt64 => Arc::new(vals.map(Value::as_u64).collect::<UInt64Array>()),
                DataType::UInt32 => Arc::new(
                    vals.map(|v| v.as_u64().map(|x| u32::try_from(x).expect("a uint32")))
                        .collect::<UInt32Array>(),
                ),
                DataType::Float64 => Arc::new(vals.map(Value::as_f64).collect::<Float64Array>()),
                DataType::Utf8 => Arc::new(vals.map(Value::as_str).collect::<StringArray>()),
                other => panic!("no leaf encoding for {other}"),
            };
            col
        })
        .collect();
    RecordBatch::try_new(schema, cols).expect("the vector rows fit the schema")
}

#[test]
fn the_vectors_are_what_the_code_makes() {
    let v = vectors(&page());
    let cases = v["rows"].as_array().expect("rows");
    let rows: Vec<&Value> = cases.iter().map(|c| &c["row"]).collect();
    let batch = batch_of(&rows);
    let encoded: Vec<Vec<u8>> = (0..batch.num_rows())
        .map(|i| merkle::encode_row(&batch, i).expect("encodes"))
        .collect();
    assert_eq!(
        cases[0]["encoded"].as_str(),
        Some(hex::encode(&encoded[0]).as_str())
    );
    let leaves: Vec<merkle::Hash> = encoded.iter().map(|e| merkle::leaf_hash(e)).collect();
    for (i, (case, leaf)) in cases.iter().zip(&leaves).enumerate() {
        assert_eq!(
            case["leaf"].as_str(),
            Some(hex::encode(leaf).as_str()),
            "leaf {i}"
        );
    }
    assert_eq!(
        v["root"].as_str(),
        Some(hex::encode(merkle::root(&leaves)).as_str())
    );
    for p in v["proofs"].as_array().expect("proofs") {
        let i = p["index"].as_u64().expect("an index") as usize;
        let path = serde_json::to_value(merkle::proof(&leaves, i)).expect("serialises");
        assert_eq!(path, p["path"], "the proof of leaf {i}");
    }
    assert_eq!(
        v["empty_root"].as_str(),
        Some(hex::encode(merkle::root(&[])).as_str())
    );
}

#[test]
fn a_verifier_from_the_page_alone_accepts_the_vectors_and_refuses_tampering() {
    let Some(python) = testenv::python_or_skip("epochs_spec verifier") else {
        return;
    };
    let repo = testenv::repo_root();
    let script = repo.join("scripts/verify_epoch.py");
    let page_path = repo.join("schemas/EPOCHS.md");
    let run = |args: &[&str]| {
        let out = Command::new(&python)
            .arg(&script)
            .args(args)
            .output()
            .expect("python runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let page_arg = page_path.to_str().expect("a UTF-8 path");
    let (code, err) = run(&["vectors", page_arg]);
    assert_eq!(code, Some(0), "{err}");

    // A proof as `hexpulse epoch proof` prints it (of the last vector row), then broken one way at
    // a time: each must be refused.
    let v = vectors(&page());
    let good = json!({
        "epoch": 42,
        "device_key": v["rows"][2]["row"]["device_key"],
        "index": 2,
        "leaves": 3,
        "row": v["rows"][2]["row"],
        "leaf": v["rows"][2]["leaf"],
        "path": v["proofs"][1]["path"],
        "root": v["root"],
    });
    let root = v["root"].as_str().expect("a root").to_string();
    let dir = tempfile::tempdir().expect("a temp dir");
    let check = |proof: &Value, root: &str| {
        let path = dir.path().join("proof.json");
        std::fs::write(&path, proof.to_string()).expect("written");
        run(&[
            "proof",
            page_arg,
            path.to_str().expect("a UTF-8 path"),
            "--root",
            root,
        ])
    };
    let (code, err) = check(&good, &root);
    assert_eq!(code, Some(0), "{err}");

    let mut more_points = good.clone();
    more_points["row"]["reward_points"] = json!(1201);
    let mut other_sibling = good.clone();
    let flipped = {
        let h = good["path"][0]["hash"].as_str().expect("a step");
        let first = if h.starts_with('0') { "1" } else { "0" };
        format!("{first}{}", &h[1..])
    };
    other_sibling["path"][0]["hash"] = json!(flipped);
    let mut other_side = good.clone();
    other_side["path"][0]["side"] = json!("right");
    let mut no_path = good.clone();
    no_path["path"] = json!([]);
    for (what, proof, root) in [
        ("a changed row", &more_points, root.as_str()),
        ("a changed sibling", &other_sibling, root.as_str()),
        ("a sibling on the wrong side", &other_side, root.as_str()),
        ("a missing step", &no_path, root.as_str()),
        ("another manifest's root", &good, &"00".repeat(32)),
    ] {
        let (code, err) = check(proof, root);
        assert_eq!(code, Some(1), "{what} was not refused: {err}");
    }
}
