//! The golden fixtures of `tests/data/golden/` (computed independently in float64; format in
//! that folder's README): every case, all four loss families, through the public API (f32)
//! and through the f64 reference, for the mean loss, the per-row losses and the gradient.

use serde_json::Value;
use softnce::reference::{self, RefOutput, Request};
use softnce::{
    HardCrossEntropy, MatMut, MatRef, Noise, Outputs, Reduction, SoftCrossEntropy, SoftInfoNce, Targets,
};
use std::path::PathBuf;

fn num(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap(),
        Value::String(s) => match s.as_str() {
            "inf" => f64::INFINITY,
            "-inf" => f64::NEG_INFINITY,
            "nan" => f64::NAN,
            other => panic!("unexpected number string {other:?}"),
        },
        other => panic!("not a number: {other:?}"),
    }
}

fn vec1(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(num).collect()
}

fn mat(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().flat_map(vec1).collect()
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn labels(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

struct Case {
    name: String,
    n: usize,
    m: usize,
    c: usize,
    t: f32,
    offset: usize,
    eps: f32,
    logits: Vec<f32>,
    targets: Vec<f32>,
    labels: Vec<u32>,
    noise: Vec<f32>,
    ce_targets: Vec<f32>,
    ce_labels: Vec<u32>,
    json: Value,
}

fn cases() -> Vec<Case> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 18, "expected the golden fixtures in {dir:?}");
    paths
        .iter()
        .map(|p| {
            let json: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
            let inp = &json["inputs"];
            Case {
                name: json["name"].as_str().unwrap().to_string(),
                n: json["N"].as_u64().unwrap() as usize,
                m: json["M"].as_u64().unwrap() as usize,
                c: json["C"].as_u64().unwrap() as usize,
                t: num(&json["t"]) as f32,
                offset: json["offset"].as_u64().unwrap() as usize,
                eps: num(&json["eps"]) as f32,
                logits: f32s(&mat(&inp["logits"])),
                targets: f32s(&mat(&inp["targets"])),
                labels: labels(&inp["labels"]),
                noise: f32s(&vec1(&inp["noise_probs"])),
                ce_targets: f32s(&mat(&inp["ce_targets"])),
                ce_labels: labels(&inp["ce_labels"]),
                json,
            }
        })
        .collect()
}

/// Tolerance for one family: the README's suggestion, widened where `f32_dev` shows that
/// float32 evaluation itself lands further away.
struct Tol {
    loss_rel: f64,
    grad_abs: f64,
}

fn tol(case: &Case, family: &str) -> Tol {
    let dev = &case.json["f32_dev"][family];
    let get = |k: &str| dev.get(k).map(num).unwrap_or(0.0);
    Tol {
        loss_rel: 1e-5f64.max(4.0 * get("loss_rel_err")),
        grad_abs: 1e-5f64.max(4.0 * get("grad_max_abs_err")),
    }
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    if b.is_nan() {
        return a.is_nan();
    }
    if b.is_infinite() {
        return a == b;
    }
    (a - b).abs() <= rel * b.abs().max(1.0)
}

/// Checks one family's results (`loss`, per-row losses, gradient of the mean loss).
fn check(case: &Case, family: &str, loss: f64, rows: &[f64], grad: &[f64], what: &str) {
    let exp = &case.json["expected"][family];
    let tol = tol(case, family);
    let ctx = format!("case {} family {family} ({what})", case.name);
    let want = num(&exp["loss_mean"]);
    assert!(
        close(loss, want, tol.loss_rel),
        "{ctx}: mean loss {loss} vs {want}"
    );
    let want_rows = vec1(&exp["loss_none"]);
    assert_eq!(rows.len(), want_rows.len(), "{ctx}");
    for (i, (&a, &b)) in rows.iter().zip(&want_rows).enumerate() {
        assert!(close(a, b, tol.loss_rel), "{ctx}: row {i} loss {a} vs {b}");
    }
    if exp["grad_logits"].is_null() {
        return; // the loss is not finite; the fixture gives no gradient
    }
    let want_grad = mat(&exp["grad_logits"]);
    let scale = want_grad.iter().fold(1.0f64, |s, g| s.max(g.abs()));
    for (k, (&a, &b)) in grad.iter().zip(&want_grad).enumerate() {
        assert!(
            (a - b).abs() <= tol.grad_abs * scale,
            "{ctx}: grad[{}, {}] {a} vs {b}",
            k / case.c,
            k % case.c
        );
    }
}

fn check_ref(case: &Case, family: &str, r: &RefOutput) {
    check(
        case,
        family,
        r.loss,
        &r.row_losses,
        &r.grad_logits,
        "reference f64",
    );
}

/// Runs one family through the public API: mean loss + gradient, then per-row losses.
fn check_api(case: &Case, family: &str, call: impl Fn(Reduction, Outputs<'_, f32>) -> softnce::Result<f32>) {
    let (n, c) = (case.n, case.c);
    let mut grad = vec![0.0f32; n * c];
    let loss = call(
        Reduction::Mean,
        Outputs::new().grad_logits(MatMut::new(&mut grad, n, c).unwrap()),
    )
    .unwrap();
    let mut rows = vec![0.0f32; n];
    call(Reduction::None, Outputs::new().row_losses(&mut rows)).unwrap();
    let loss_only = call(Reduction::Mean, Outputs::new()).unwrap();
    assert!(
        loss_only == loss || (loss.is_nan() && loss_only.is_nan()),
        "{}: loss-only call differs",
        case.name
    );
    let rows: Vec<f64> = rows.iter().map(|&x| x as f64).collect();
    let grad: Vec<f64> = grad.iter().map(|&x| x as f64).collect();
    check(case, family, loss as f64, &rows, &grad, "public API f32");
}

#[test]
fn golden_soft_infonce() {
    for case in cases() {
        let z = MatRef::new(&case.logits, case.n, case.c).unwrap();
        let a = Targets::Dense(MatRef::new(&case.targets, case.m, case.c).unwrap());
        let logs: Vec<f32> = case.noise.iter().map(|p| p.ln()).collect();
        for noise in [Noise::Probs(&case.noise), Noise::LogProbs(&logs)] {
            let cfg = SoftInfoNce::new()
                .temperature(case.t)
                .offset(case.offset)
                .noise(noise);
            check_ref(
                &case,
                "soft_infonce",
                &reference::soft_infonce(&cfg, z, &a, &Request::loss_and_grad()).unwrap(),
            );
            check_api(&case, "soft_infonce", |r, o| cfg.reduction(r).compute(z, &a, o));
        }
    }
}

#[test]
fn golden_hard_infonce() {
    for case in cases() {
        let z = MatRef::new(&case.logits, case.n, case.c).unwrap();
        let a = Targets::hard(&case.labels, 0.0);
        let cfg = SoftInfoNce::new()
            .temperature(case.t)
            .offset(case.offset)
            .noise(Noise::Probs(&case.noise));
        check_ref(
            &case,
            "hard_infonce",
            &reference::soft_infonce(&cfg, z, &a, &Request::loss_and_grad()).unwrap(),
        );
        check_api(&case, "hard_infonce", |r, o| cfg.reduction(r).compute(z, &a, o));
    }
}

#[test]
fn golden_soft_ce() {
    for case in cases() {
        let z = MatRef::new(&case.logits, case.n, case.c).unwrap();
        let a = Targets::Dense(MatRef::new(&case.ce_targets, case.n, case.c).unwrap());
        let cfg = SoftCrossEntropy::new().temperature(case.t);
        check_ref(
            &case,
            "soft_ce",
            &reference::soft_cross_entropy(&cfg, z, &a, &Request::loss_and_grad()).unwrap(),
        );
        check_api(&case, "soft_ce", |r, o| cfg.reduction(r).compute(z, &a, o));
    }
}

#[test]
fn golden_hard_ce_label_smoothing() {
    for case in cases() {
        let z = MatRef::new(&case.logits, case.n, case.c).unwrap();
        let cfg = HardCrossEntropy::new().temperature(case.t).smoothing(case.eps);
        check_ref(
            &case,
            "hard_ce_ls",
            &reference::hard_cross_entropy(&cfg, z, &case.ce_labels, &Request::loss_and_grad()).unwrap(),
        );
        check_api(&case, "hard_ce_ls", |r, o| {
            cfg.reduction(r).compute(z, &case.ce_labels, o)
        });
        // The same loss as soft CE with `Hard` targets (no ignore index).
        let a = Targets::hard(&case.ce_labels, case.eps);
        let soft = SoftCrossEntropy::new().temperature(case.t);
        check_api(&case, "hard_ce_ls", |r, o| soft.reduction(r).compute(z, &a, o));
    }
}

/// The fixtures that were built from smoothed one-hot or MixUp recipes also pass through the
/// structured target forms (not only their dense rows).
#[test]
fn golden_structured_recipes() {
    let mut seen = 0;
    for case in cases() {
        let recipe = &case.json["targets_recipe"];
        let kind = recipe["kind"].as_str().unwrap();
        let eps = recipe.get("eps").map(num).unwrap_or(0.0) as f32;
        let z = MatRef::new(&case.logits, case.n, case.c).unwrap();
        let cfg = SoftInfoNce::new()
            .temperature(case.t)
            .offset(case.offset)
            .noise(Noise::Probs(&case.noise));
        let (a, b, lam): (Vec<u32>, Vec<u32>, Vec<f32>) = match kind {
            "one_hot" | "smooth" => {
                let y = labels(&recipe["labels"]);
                (y.clone(), y, vec![1.0; case.m])
            }
            "mixup" | "mixup+smooth" => {
                let lam = recipe["lam"].clone();
                let lam: Vec<f32> = match lam {
                    Value::Array(_) => f32s(&vec1(&lam)),
                    v => vec![num(&v) as f32; case.m],
                };
                (labels(&recipe["a"]), labels(&recipe["b"]), lam)
            }
            _ => continue,
        };
        // Use the recipe only where it reproduces the fixture's targets (some fixtures edit
        // rows after applying it, e.g. zeroing one).
        let c = case.c;
        let matches = (0..case.m).all(|j| {
            (0..c).all(|k| {
                let mut v = eps as f64 / c as f64;
                if a[j] as usize == k {
                    v += (1.0 - eps as f64) * lam[j] as f64;
                }
                if b[j] as usize == k {
                    v += (1.0 - eps as f64) * (1.0 - lam[j] as f64);
                }
                (v - case.targets[j * c + k] as f64).abs() < 1e-6
            })
        });
        if !matches {
            continue;
        }
        let t = Targets::mixed(&a, &b, softnce::RowParam::PerRow(&lam), eps);
        let mut grad = vec![0.0f32; case.n * case.c];
        let loss = cfg
            .loss_and_grad(z, &t, MatMut::new(&mut grad, case.n, case.c).unwrap())
            .unwrap();
        let mut rows = vec![0.0f32; case.n];
        cfg.reduction(Reduction::None)
            .compute(z, &t, Outputs::new().row_losses(&mut rows))
            .unwrap();
        let rows: Vec<f64> = rows.iter().map(|&x| x as f64).collect();
        let grad: Vec<f64> = grad.iter().map(|&x| x as f64).collect();
        check(
            &case,
            "soft_infonce",
            loss as f64,
            &rows,
            &grad,
            "structured recipe",
        );
        seen += 1;
    }
    assert!(seen >= 10, "only {seen} fixtures had a structured recipe");
}
