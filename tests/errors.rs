//! Every `softnce::Error` variant, from every call that can raise it.
//!
//! Each failing call is made with output buffers (row losses and gradients) filled with a
//! sentinel, and the test checks that the call returned the expected error, wrote nothing,
//! and that the error's `Display` message is non-empty. Where the f64 reference can see the
//! same mistake it must report the same error (its validation is documented as identical).
//! Non-finite logits, by contrast, are data and must not be errors.

use softnce::reference::{self, RefOutput, Request};
use softnce::{
    bf16, f16, Backend, Error, HardCrossEntropy, MatMut, MatRef, Noise, Outputs, Reduction, Result, RowParam,
    SoftCrossEntropy, SoftInfoNce, SparseTargets, Targets,
};

const SENTINEL: f32 = 7.0;

/// Shared small inputs: N = 2 rows, C = 3 classes.
const N: usize = 2;
const C: usize = 3;
const Z: [f32; 6] = [0.5, -1.0, 2.0, 1.5, 0.25, -0.75];
const A: [f32; 6] = [0.7, 0.2, 0.1, 0.0, 0.5, 0.5];
const Y: [u32; 2] = [2, 0];

fn z() -> MatRef<'static, f32> {
    MatRef::new(&Z, N, C).unwrap()
}

fn dense() -> Targets<'static, f32> {
    Targets::Dense(MatRef::new(&A, N, C).unwrap())
}

fn assert_untouched(what: &str, buf: &[f32]) {
    assert!(
        buf.iter().all(|x| x.to_bits() == SENTINEL.to_bits()),
        "{what} was written on error: {buf:?}"
    );
}

fn assert_message(e: &Error) {
    let msg = e.to_string();
    assert!(!msg.trim().is_empty(), "empty Display for {e:?}");
    // The error is usable as a `dyn std::error::Error`.
    let boxed: Box<dyn std::error::Error> = Box::new(e.clone());
    assert_eq!(boxed.to_string(), msg);
}

/// Errors may carry NaN, which is not `==` to itself: compare their `Debug` forms.
fn assert_same(a: &Error, b: &Error) {
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}

/// Runs `call` with an `N × C` gradient and `N` row losses (both sentinel-filled), expects an
/// error, checks that nothing was written and that the message is non-empty.
fn expect_err(n: usize, c: usize, call: impl for<'o> FnOnce(Outputs<'o, f32>) -> Result<f32>) -> Error {
    expect_err_writing_if(n, c, call, |_| false)
}

/// Like `expect_err`, but the outputs may have been written when `written_ok(&error)`: the
/// one documented case is an invalid dense weight of soft CE, found inside the kernel.
fn expect_err_writing_if(
    n: usize,
    c: usize,
    call: impl for<'o> FnOnce(Outputs<'o, f32>) -> Result<f32>,
    written_ok: impl Fn(&Error) -> bool,
) -> Error {
    let mut rows = vec![SENTINEL; n];
    let mut grad = vec![SENTINEL; n * c];
    let out = Outputs::new()
        .row_losses(&mut rows)
        .grad_logits(MatMut::new(&mut grad, n, c).unwrap());
    let err = match call(out) {
        Ok(v) => panic!("expected an error, got Ok({v})"),
        Err(e) => e,
    };
    if !written_ok(&err) {
        assert_untouched("row_losses", &rows);
        assert_untouched("grad_logits", &grad);
    }
    assert_message(&err);
    err
}

/// Like `expect_err` with an additional sentinel-filled `m × c` target-gradient buffer.
fn expect_err_with_target_grad(
    n: usize,
    m: usize,
    c: usize,
    call: impl for<'o> FnOnce(Outputs<'o, f32>) -> Result<f32>,
) -> Error {
    let mut ga = vec![SENTINEL; m * c];
    let err = expect_err(n, c, |out| {
        call(out.grad_targets(MatMut::new(&mut ga, m, c).unwrap()))
    });
    assert_untouched("grad_targets", &ga);
    err
}

fn ref_err(r: Result<RefOutput>) -> Error {
    match r {
        Ok(_) => panic!("the reference accepted inputs the API rejects"),
        Err(e) => e,
    }
}

/// Soft InfoNCE through the API (gradient, row losses and, for dense targets, the target
/// gradient requested) and through the reference; both must fail alike.
fn nce_err(cfg: &SoftInfoNce<'_>, z: MatRef<'_, f32>, targets: &Targets<'_, f32>) -> Error {
    let (n, c) = (z.rows(), z.cols());
    let m = targets.rows();
    let dense_ok = matches!(targets, Targets::Dense(d) if d.cols() == c);
    let e = if dense_ok {
        expect_err_with_target_grad(n, m, c, |out| cfg.compute(z, targets, out))
    } else {
        expect_err(n, c, |out| cfg.compute(z, targets, out))
    };
    let req = Request {
        grad_logits: true,
        grad_targets: dense_ok,
        upstream: None,
    };
    assert_same(&ref_err(reference::soft_infonce(cfg, z, targets, &req)), &e);
    // A loss-only call fails the same way (unless the error is about the gradient request).
    if !matches!(e, Error::Upstream(_)) {
        assert_same(&cfg.loss(z, targets).unwrap_err(), &e);
    }
    e
}

fn soft_ce_err(cfg: &SoftCrossEntropy, z: MatRef<'_, f32>, targets: &Targets<'_, f32>) -> Error {
    let dense = matches!(targets, Targets::Dense(_));
    let e = expect_err_writing_if(
        z.rows(),
        z.cols(),
        |out| cfg.compute(z, targets, out),
        |e| dense && matches!(e, Error::InvalidTargetWeight { .. }),
    );
    assert_same(
        &ref_err(reference::soft_cross_entropy(
            cfg,
            z,
            targets,
            &Request::loss_and_grad(),
        )),
        &e,
    );
    if !matches!(e, Error::Upstream(_)) {
        assert_same(&cfg.loss(z, targets).unwrap_err(), &e);
    }
    e
}

fn hard_ce_err(cfg: &HardCrossEntropy, z: MatRef<'_, f32>, labels: &[u32]) -> Error {
    let e = expect_err(z.rows(), z.cols(), |out| cfg.compute(z, labels, out));
    assert_same(
        &ref_err(reference::hard_cross_entropy(
            cfg,
            z,
            labels,
            &Request::loss_and_grad(),
        )),
        &e,
    );
    if !matches!(e, Error::Upstream(_)) {
        assert_same(&cfg.loss(z, labels).unwrap_err(), &e);
    }
    e
}

/// The same targets under soft InfoNCE and soft cross-entropy (M = N).
fn both_soft_err(targets: &Targets<'_, f32>) -> [Error; 2] {
    [
        nce_err(&SoftInfoNce::new(), z(), targets),
        soft_ce_err(&SoftCrossEntropy::new(), z(), targets),
    ]
}

// ---------------------------------------------------------------------------------------
// ZeroClasses
// ---------------------------------------------------------------------------------------

#[test]
fn zero_classes() {
    let empty: [f32; 0] = [];
    let z0 = MatRef::new(&empty, N, 0).unwrap();
    let t0 = Targets::Dense(MatRef::new(&empty, N, 0).unwrap());
    for e in [
        nce_err(&SoftInfoNce::new(), z0, &t0),
        nce_err(&SoftInfoNce::new(), z0, &Targets::hard(&Y, 0.0)),
        soft_ce_err(&SoftCrossEntropy::new(), z0, &t0),
        hard_ce_err(&HardCrossEntropy::new(), z0, &Y),
    ] {
        assert_eq!(e, Error::ZeroClasses);
    }
}

// ---------------------------------------------------------------------------------------
// StrideTooSmall and BufferTooSmall (view construction)
// ---------------------------------------------------------------------------------------

#[test]
fn stride_too_small() {
    let data = [SENTINEL; 12];
    let e = MatRef::with_stride(&data, 3, 4, 3).unwrap_err();
    assert_eq!(e, Error::StrideTooSmall { stride: 3, cols: 4 });
    assert_message(&e);
    let e = MatRef::with_stride(&data, 1, 1, 0).unwrap_err();
    assert_eq!(e, Error::StrideTooSmall { stride: 0, cols: 1 });

    let mut buf = vec![SENTINEL; 12];
    let e = MatMut::with_stride(&mut buf, 3, 4, 2).unwrap_err();
    assert_eq!(e, Error::StrideTooSmall { stride: 2, cols: 4 });
    assert_message(&e);
    assert_untouched("MatMut buffer", &buf);

    let halves = [f16::from_f32(SENTINEL); 12];
    let e = MatRef::with_stride(&halves, 2, 5, 4).unwrap_err();
    assert_eq!(e, Error::StrideTooSmall { stride: 4, cols: 5 });
}

#[test]
fn buffer_too_small() {
    let data = [SENTINEL; 8];
    let e = MatRef::new(&data[..5], 2, 3).unwrap_err();
    assert!(
        matches!(
            e,
            Error::BufferTooSmall {
                needed: 6,
                len: 5,
                ..
            }
        ),
        "{e:?}"
    );
    assert_message(&e);
    // With a stride, the last row needs only its `cols` elements: (2 − 1)·5 + 3 = 8.
    let e = MatRef::with_stride(&data[..7], 2, 3, 5).unwrap_err();
    assert!(
        matches!(
            e,
            Error::BufferTooSmall {
                needed: 8,
                len: 7,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(MatRef::with_stride(&data, 2, 3, 5).is_ok());

    let mut buf = vec![SENTINEL; 7];
    let e = MatMut::with_stride(&mut buf, 2, 3, 5).unwrap_err();
    assert!(
        matches!(
            e,
            Error::BufferTooSmall {
                needed: 8,
                len: 7,
                ..
            }
        ),
        "{e:?}"
    );
    assert_message(&e);
    assert_untouched("MatMut buffer", &buf);
    let e = MatMut::new(&mut buf, 4, 2).unwrap_err();
    assert!(
        matches!(
            e,
            Error::BufferTooSmall {
                needed: 8,
                len: 7,
                ..
            }
        ),
        "{e:?}"
    );

    // A shape whose span overflows `usize` is an error, not a panic.
    let e = MatRef::with_stride(&data, usize::MAX, 2, usize::MAX).unwrap_err();
    assert!(matches!(e, Error::BufferTooSmall { len: 8, .. }), "{e:?}");
    let e = MatRef::new(&data, usize::MAX, usize::MAX).unwrap_err();
    assert!(matches!(e, Error::BufferTooSmall { len: 8, .. }), "{e:?}");

    let halves = [bf16::from_f32(1.0); 5];
    assert!(matches!(
        MatRef::new(&halves, 3, 2).unwrap_err(),
        Error::BufferTooSmall {
            needed: 6,
            len: 5,
            ..
        }
    ));
}

// ---------------------------------------------------------------------------------------
// ShapeMismatch
// ---------------------------------------------------------------------------------------

fn assert_mismatch(e: &Error, expected: usize, found: usize) {
    match e {
        Error::ShapeMismatch {
            expected: x,
            found: y,
            ..
        } => assert_eq!((*x, *y), (expected, found), "{e:?}"),
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
}

#[test]
fn shape_mismatch_target_columns() {
    let wide = [0.25f32; 8];
    let t = Targets::Dense(MatRef::new(&wide, N, C + 1).unwrap());
    for e in both_soft_err(&t) {
        assert_mismatch(&e, C, C + 1);
    }
    let narrow = Targets::Dense(MatRef::new(&wide, N, C - 1).unwrap());
    for e in both_soft_err(&narrow) {
        assert_mismatch(&e, C, C - 1);
    }
}

#[test]
fn shape_mismatch_cross_entropy_target_rows() {
    let cfg = SoftCrossEntropy::new();
    let three = [0u32, 1, 2];
    assert_mismatch(&soft_ce_err(&cfg, z(), &Targets::hard(&three, 0.0)), N, 3);
    let a3 = [0.5f32; 9];
    assert_mismatch(
        &soft_ce_err(&cfg, z(), &Targets::Dense(MatRef::new(&a3, 3, C).unwrap())),
        N,
        3,
    );
    assert_mismatch(&soft_ce_err(&cfg, z(), &Targets::hard(&Y[..1], 0.0)), N, 1);
    // InfoNCE accepts M > N (more candidates than rows).
    assert!(SoftInfoNce::new().loss(z(), &Targets::hard(&three, 0.0)).is_ok());
}

#[test]
fn shape_mismatch_hard_ce_labels_length() {
    let cfg = HardCrossEntropy::new();
    assert_mismatch(&hard_ce_err(&cfg, z(), &[0, 1, 2]), N, 3);
    assert_mismatch(&hard_ce_err(&cfg, z(), &[0]), N, 1);
}

/// Calls each loss with a gradient buffer of shape `rows × cols` (and sentinel row losses).
fn grad_shape_errors(rows: usize, cols: usize) -> Vec<Error> {
    let mut errs = Vec::new();
    type Call<'a> = Box<dyn Fn(Outputs<'_, f32>) -> Result<f32> + 'a>;
    let targets = dense();
    let calls: Vec<Call> = vec![
        Box::new(|out| SoftInfoNce::new().compute(z(), &targets, out)),
        Box::new(|out| SoftCrossEntropy::new().compute(z(), &targets, out)),
        Box::new(|out| HardCrossEntropy::new().compute(z(), &Y, out)),
    ];
    for call in &calls {
        let mut rl = vec![SENTINEL; N];
        let mut g = vec![SENTINEL; rows * cols];
        let e = call(
            Outputs::new()
                .row_losses(&mut rl)
                .grad_logits(MatMut::new(&mut g, rows, cols).unwrap()),
        )
        .unwrap_err();
        assert_untouched("row_losses", &rl);
        assert_untouched("grad_logits", &g);
        assert_message(&e);
        errs.push(e);
        // `loss_and_grad` checks the same.
        let mut g = vec![SENTINEL; rows * cols];
        let gm = MatMut::new(&mut g, rows, cols).unwrap();
        let e2 = match errs.len() {
            1 => SoftInfoNce::new().loss_and_grad(z(), &targets, gm),
            2 => SoftCrossEntropy::new().loss_and_grad(z(), &targets, gm),
            _ => HardCrossEntropy::new().loss_and_grad(z(), &Y, gm),
        }
        .unwrap_err();
        assert_untouched("grad", &g);
        assert_same(&e2, errs.last().unwrap());
    }
    errs
}

#[test]
fn shape_mismatch_grad_logits() {
    for e in grad_shape_errors(N + 1, C) {
        assert_mismatch(&e, N, N + 1);
    }
    for e in grad_shape_errors(N - 1, C) {
        assert_mismatch(&e, N, N - 1);
    }
    for e in grad_shape_errors(N, C + 2) {
        assert_mismatch(&e, C, C + 2);
    }
    // The transposed shape (same element count) is not accepted either.
    for e in grad_shape_errors(C, N) {
        assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
    }
}

#[test]
fn shape_mismatch_grad_targets() {
    let m = 4;
    let a = [0.25f32; 12];
    let t = Targets::Dense(MatRef::new(&a, m, C).unwrap());
    let cfg = SoftInfoNce::new();
    for (rows, cols, expected, found) in [(m + 1, C, m, m + 1), (N, C, m, N), (m, C - 1, C, C - 1)] {
        let e = expect_err_with_target_grad(N, rows, cols, |out| cfg.compute(z(), &t, out));
        assert_mismatch(&e, expected, found);
    }
}

#[test]
fn shape_mismatch_row_losses() {
    let targets = dense();
    for len in [N - 1, N + 1, 0] {
        type Call<'a> = Box<dyn Fn(Outputs<'_, f32>) -> Result<f32> + 'a>;
        let calls: Vec<Call> = vec![
            Box::new(|out| SoftInfoNce::new().compute(z(), &targets, out)),
            Box::new(|out| SoftCrossEntropy::new().compute(z(), &targets, out)),
            Box::new(|out| HardCrossEntropy::new().compute(z(), &Y, out)),
        ];
        for call in &calls {
            let mut rl = vec![SENTINEL; len];
            let mut g = vec![SENTINEL; N * C];
            let e = call(
                Outputs::new()
                    .row_losses(&mut rl)
                    .grad_logits(MatMut::new(&mut g, N, C).unwrap()),
            )
            .unwrap_err();
            assert_mismatch(&e, N, len);
            assert_untouched("row_losses", &rl);
            assert_untouched("grad_logits", &g);
            assert_message(&e);
        }
    }
}

#[test]
fn shape_mismatch_upstream_length() {
    let targets = dense();
    for len in [N - 1, N + 1] {
        let up = vec![1.0f32; len];
        let nce = SoftInfoNce::new().reduction(Reduction::None);
        let sce = SoftCrossEntropy::new().reduction(Reduction::None);
        let hce = HardCrossEntropy::new().reduction(Reduction::None);
        let errs = [
            expect_err(N, C, |out| nce.compute(z(), &targets, out.upstream(&up))),
            expect_err(N, C, |out| sce.compute(z(), &targets, out.upstream(&up))),
            expect_err(N, C, |out| hce.compute(z(), &Y, out.upstream(&up))),
        ];
        for e in &errs {
            assert_mismatch(e, N, len);
        }
        let req = Request {
            grad_logits: true,
            grad_targets: false,
            upstream: Some(&up),
        };
        assert_same(
            &ref_err(reference::soft_infonce(&nce, z(), &targets, &req)),
            &errs[0],
        );
        assert_same(
            &ref_err(reference::soft_cross_entropy(&sce, z(), &targets, &req)),
            &errs[1],
        );
        assert_same(
            &ref_err(reference::hard_cross_entropy(&hce, z(), &Y, &req)),
            &errs[2],
        );
        // Also when only the row losses are requested.
        let mut rl = vec![SENTINEL; N];
        let e = nce
            .compute(z(), &targets, Outputs::new().row_losses(&mut rl).upstream(&up))
            .unwrap_err();
        assert_mismatch(&e, N, len);
        assert_untouched("row_losses", &rl);
    }
}

#[test]
fn shape_mismatch_noise_length() {
    let short = [0.5f32; C - 1];
    let long = [-1.0f32; C + 1];
    let e = nce_err(&SoftInfoNce::new().noise(Noise::Probs(&short)), z(), &dense());
    assert_mismatch(&e, C, C - 1);
    let e = nce_err(
        &SoftInfoNce::new().noise(Noise::LogProbs(&long)),
        z(),
        &Targets::hard(&Y, 0.1),
    );
    assert_mismatch(&e, C, C + 1);
}

#[test]
fn shape_mismatch_mixed_b_length() {
    let b = [1u32, 0, 2];
    let t = Targets::mixed(&Y, &b, RowParam::Batch(0.5), 0.0);
    for e in both_soft_err(&t) {
        assert_mismatch(&e, N, 3);
    }
    let t = Targets::mixed(&Y, &b[..1], RowParam::Batch(0.5), 0.0);
    for e in both_soft_err(&t) {
        assert_mismatch(&e, N, 1);
    }
}

#[test]
fn shape_mismatch_mixed_per_row_lambda_length() {
    let b = [1u32, 1];
    let lam = [0.5f32, 0.5, 0.5];
    let t = Targets::mixed(&Y, &b, RowParam::PerRow(&lam), 0.1);
    for e in both_soft_err(&t) {
        assert_mismatch(&e, N, 3);
    }
    let t = Targets::mixed(&Y, &b, RowParam::PerRow(&lam[..1]), 0.1);
    for e in both_soft_err(&t) {
        assert_mismatch(&e, N, 1);
    }
}

#[test]
fn shape_mismatch_sparse_per_row_floor_length() {
    let indptr = [0usize, 1, 2];
    let idx = [0u32, 2];
    let w = [1.0f32, 0.5];
    let floors = [0.1f32; 3];
    let t = Targets::Sparse(SparseTargets::new(&indptr, &idx, &w, RowParam::PerRow(&floors)));
    for e in both_soft_err(&t) {
        assert_mismatch(&e, N, 3);
    }
}

// ---------------------------------------------------------------------------------------
// InvalidTemperature
// ---------------------------------------------------------------------------------------

#[test]
fn invalid_temperature() {
    for t in [
        0.0f32,
        -0.0,
        -1.0,
        -1e-30,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ] {
        let errs = [
            nce_err(&SoftInfoNce::new().temperature(t), z(), &dense()),
            soft_ce_err(&SoftCrossEntropy::new().temperature(t), z(), &dense()),
            hard_ce_err(&HardCrossEntropy::new().temperature(t), z(), &Y),
        ];
        for e in errs {
            match e {
                Error::InvalidTemperature(v) => {
                    assert!(
                        v.to_bits() == t.to_bits() || (v.is_nan() && t.is_nan()),
                        "{v} vs {t}"
                    )
                }
                other => panic!("t = {t}: expected InvalidTemperature, got {other:?}"),
            }
        }
    }
    // Tiny and huge finite temperatures are valid.
    for t in [1e-30f32, f32::MIN_POSITIVE, 1e30] {
        assert!(
            SoftInfoNce::new().temperature(t).loss(z(), &dense()).is_ok(),
            "t = {t}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// OffsetOutOfRange
// ---------------------------------------------------------------------------------------

#[test]
fn offset_out_of_range() {
    let labels = [0u32, 1, 2]; // M = 3 targets, N = 2 rows
    let t = Targets::hard(&labels, 0.0);
    let e = nce_err(&SoftInfoNce::new().offset(2), z(), &t);
    assert_eq!(
        e,
        Error::OffsetOutOfRange {
            offset: 2,
            rows: N,
            targets: 3
        }
    );
    // offset + N overflowing usize is an error, not a panic.
    let e = nce_err(&SoftInfoNce::new().offset(usize::MAX), z(), &t);
    assert!(
        matches!(
            e,
            Error::OffsetOutOfRange {
                offset: usize::MAX,
                ..
            }
        ),
        "{e:?}"
    );
    // N > M with offset 0.
    let e = nce_err(&SoftInfoNce::new(), z(), &Targets::hard(&labels[..1], 0.0));
    assert!(
        matches!(
            e,
            Error::OffsetOutOfRange {
                offset: 0,
                targets: 1,
                ..
            }
        ),
        "{e:?}"
    );
    // The last valid offset is M − N.
    assert!(SoftInfoNce::new().offset(1).loss(z(), &t).is_ok());
}

// ---------------------------------------------------------------------------------------
// LabelOutOfRange
// ---------------------------------------------------------------------------------------

fn assert_label(e: &Error, index: usize, label: u32) {
    match e {
        Error::LabelOutOfRange {
            index: i,
            label: l,
            classes,
            ..
        } => assert_eq!((*i, *l, *classes), (index, label, C), "{e:?}"),
        other => panic!("expected LabelOutOfRange, got {other:?}"),
    }
}

#[test]
fn label_out_of_range_hard_targets() {
    let bad = [0u32, 3];
    for e in both_soft_err(&Targets::hard(&bad, 0.1)) {
        assert_label(&e, 1, 3);
    }
    let bad = [u32::MAX, 0];
    for e in both_soft_err(&Targets::hard(&bad, 0.0)) {
        assert_label(&e, 0, u32::MAX);
    }
}

#[test]
fn label_out_of_range_mixed_a_and_b() {
    let ok = [1u32, 2];
    let bad = [0u32, 7];
    for e in both_soft_err(&Targets::mixed(&bad, &ok, RowParam::Batch(0.3), 0.0)) {
        assert_label(&e, 1, 7);
    }
    for e in both_soft_err(&Targets::mixed(&ok, &bad, RowParam::Batch(0.3), 0.0)) {
        assert_label(&e, 1, 7);
    }
}

#[test]
fn label_out_of_range_sparse_indices() {
    let indptr = [0usize, 2, 3];
    let idx = [0u32, 1, 3];
    let w = [0.5f32, 0.5, 1.0];
    let t = Targets::Sparse(SparseTargets::new(&indptr, &idx, &w, RowParam::Batch(0.0)));
    for e in both_soft_err(&t) {
        assert_label(&e, 2, 3); // position in the CSR arrays
    }
}

#[test]
fn label_out_of_range_hard_ce() {
    assert_label(&hard_ce_err(&HardCrossEntropy::new(), z(), &[3, 0]), 0, 3);
    // An ignore index that is not the offending label does not help.
    let cfg = HardCrossEntropy::new().ignore_index(Some(99));
    assert_label(&hard_ce_err(&cfg, z(), &[1, 98]), 1, 98);
    let cfg = HardCrossEntropy::new().ignore_index(Some(0));
    assert_label(&hard_ce_err(&cfg, z(), &[0, u32::MAX]), 1, u32::MAX);
}

/// `ignore_index` equal to an out-of-range label is not an error: that row is ignored.
#[test]
fn ignored_out_of_range_label_is_not_an_error() {
    for ignore in [99u32, u32::MAX] {
        let cfg = HardCrossEntropy::new().smoothing(0.1).ignore_index(Some(ignore));
        let mut g = vec![SENTINEL; N * C];
        let mut rl = vec![SENTINEL; N];
        let loss = cfg
            .compute(
                z(),
                &[1, ignore],
                Outputs::new()
                    .row_losses(&mut rl)
                    .grad_logits(MatMut::new(&mut g, N, C).unwrap()),
            )
            .unwrap();
        // Equals the loss of the first row alone (mean over the one non-ignored row).
        let alone = HardCrossEntropy::new()
            .smoothing(0.1)
            .loss(MatRef::new(&Z[..C], 1, C).unwrap(), &[1])
            .unwrap();
        assert!((loss - alone).abs() <= 1e-6 * alone.abs(), "{loss} vs {alone}");
        assert_eq!(rl[1], 0.0);
        assert!(rl[0].is_finite() && rl[0] > 0.0);
        assert_eq!(&g[C..], &[0.0; C]);
        assert!(g[..C].iter().all(|x| x.is_finite() && *x != SENTINEL));
        assert!(reference::hard_cross_entropy(&cfg, z(), &[1, ignore], &Request::loss_and_grad()).is_ok());
    }
}

// ---------------------------------------------------------------------------------------
// OutOfUnitInterval
// ---------------------------------------------------------------------------------------

fn assert_unit(e: &Error, index: usize, value: f32) {
    match e {
        Error::OutOfUnitInterval {
            index: i, value: v, ..
        } => {
            assert_eq!(*i, index, "{e:?}");
            assert!(
                v.to_bits() == value.to_bits() || (v.is_nan() && value.is_nan()),
                "{e:?}"
            );
        }
        other => panic!("expected OutOfUnitInterval, got {other:?}"),
    }
}

const OUTSIDE: [f32; 6] = [-0.1, 1.5, -1e-9, 1.0000001, f32::NAN, f32::INFINITY];

#[test]
fn out_of_unit_interval_smoothing() {
    let b = [0u32, 0];
    for eps in OUTSIDE {
        for e in both_soft_err(&Targets::hard(&Y, eps)) {
            assert_unit(&e, 0, eps);
        }
        for e in both_soft_err(&Targets::mixed(&Y, &b, RowParam::Batch(0.5), eps)) {
            assert_unit(&e, 0, eps);
        }
        assert_unit(
            &hard_ce_err(&HardCrossEntropy::new().smoothing(eps), z(), &Y),
            0,
            eps,
        );
    }
    // The end points are valid.
    for eps in [0.0f32, 1.0] {
        assert!(SoftInfoNce::new().loss(z(), &Targets::hard(&Y, eps)).is_ok());
        assert!(HardCrossEntropy::new().smoothing(eps).loss(z(), &Y).is_ok());
    }
}

#[test]
fn out_of_unit_interval_lambda() {
    let b = [1u32, 1];
    for lam in OUTSIDE {
        for e in both_soft_err(&Targets::mixed(&Y, &b, RowParam::Batch(lam), 0.0)) {
            assert_unit(&e, 0, lam);
        }
        let per_row = [0.5f32, lam];
        for e in both_soft_err(&Targets::mixed(&Y, &b, RowParam::PerRow(&per_row), 0.1)) {
            assert_unit(&e, 1, lam);
        }
    }
    let per_row = [0.0f32, 1.0];
    assert!(SoftCrossEntropy::new()
        .loss(z(), &Targets::mixed(&Y, &b, RowParam::PerRow(&per_row), 1.0))
        .is_ok());
}

// ---------------------------------------------------------------------------------------
// InvalidTargetWeight
// ---------------------------------------------------------------------------------------

fn assert_weight(e: &Error, row: usize, col: usize, value: f32) {
    match e {
        Error::InvalidTargetWeight {
            row: r,
            col: k,
            value: v,
            ..
        } => {
            assert_eq!((*r, *k), (row, col), "{e:?}");
            assert!(
                v.to_bits() == value.to_bits() || (v.is_nan() && value.is_nan()),
                "{e:?}"
            );
        }
        other => panic!("expected InvalidTargetWeight, got {other:?}"),
    }
}

#[test]
fn invalid_target_weight_dense() {
    for bad in [
        -0.1f32,
        -f32::MIN_POSITIVE,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ] {
        let mut a = A;
        a[4] = bad; // row 1, class 1
        let t = Targets::Dense(MatRef::new(&a, N, C).unwrap());
        for e in both_soft_err(&t) {
            assert_weight(&e, 1, 1, bad);
        }
    }
}

#[test]
fn invalid_target_weight_dense_half_precision() {
    let z16: Vec<f16> = Z.iter().map(|&v| f16::from_f32(v)).collect();
    let mut a16: Vec<f16> = A.iter().map(|&v| f16::from_f32(v)).collect();
    a16[2] = f16::INFINITY;
    let z16 = MatRef::new(&z16, N, C).unwrap();
    let t = Targets::Dense(MatRef::new(&a16, N, C).unwrap());
    let mut g = vec![f16::from_f32(SENTINEL); N * C];
    let e = SoftInfoNce::new()
        .loss_and_grad(z16, &t, MatMut::new(&mut g, N, C).unwrap())
        .unwrap_err();
    assert_weight(&e, 0, 2, f32::INFINITY);
    assert!(g.iter().all(|&x| x == f16::from_f32(SENTINEL)));
    assert_message(&e);

    let zb: Vec<bf16> = Z.iter().map(|&v| bf16::from_f32(v)).collect();
    let mut ab: Vec<bf16> = A.iter().map(|&v| bf16::from_f32(v)).collect();
    ab[3] = bf16::from_f32(-2.0);
    let e = SoftCrossEntropy::new()
        .loss(
            MatRef::new(&zb, N, C).unwrap(),
            &Targets::Dense(MatRef::new(&ab, N, C).unwrap()),
        )
        .unwrap_err();
    assert_weight(&e, 1, 0, -2.0);
}

#[test]
fn invalid_target_weight_sparse() {
    let indptr = [0usize, 2, 3];
    let idx = [0u32, 2, 1];
    for bad in [-0.5f32, f32::NAN, f32::INFINITY] {
        let w = [0.5f32, 0.5, bad];
        let t = Targets::Sparse(SparseTargets::new(&indptr, &idx, &w, RowParam::Batch(0.0)));
        for e in both_soft_err(&t) {
            assert_weight(&e, 1, 2, bad); // row 1, CSR position 2
        }
    }
    let w = [0.5f32, 0.5, 1.0];
    for bad in [-0.01f32, f32::NAN, f32::INFINITY] {
        let t = Targets::Sparse(SparseTargets::new(&indptr, &idx, &w, RowParam::Batch(bad)));
        for e in both_soft_err(&t) {
            assert_weight(&e, 0, 0, bad);
        }
        let floors = [0.1f32, bad];
        let t = Targets::Sparse(SparseTargets::new(&indptr, &idx, &w, RowParam::PerRow(&floors)));
        for e in both_soft_err(&t) {
            assert_weight(&e, 1, 0, bad);
        }
    }
}

// ---------------------------------------------------------------------------------------
// InvalidNoise
// ---------------------------------------------------------------------------------------

#[test]
fn invalid_noise() {
    for bad in [0.0f32, -0.0, -0.3, f32::NAN, f32::INFINITY] {
        let p = [0.5f32, bad, 0.25];
        let e = nce_err(&SoftInfoNce::new().noise(Noise::Probs(&p)), z(), &dense());
        match e {
            Error::InvalidNoise { class: 1, value } => {
                assert!(value.to_bits() == bad.to_bits() || (value.is_nan() && bad.is_nan()))
            }
            other => panic!("η = {bad}: expected InvalidNoise at class 1, got {other:?}"),
        }
    }
    for bad in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
        let l = [bad, -1.0f32, -2.0];
        let e = nce_err(
            &SoftInfoNce::new().noise(Noise::LogProbs(&l)),
            z(),
            &Targets::hard(&Y, 0.1),
        );
        assert!(
            matches!(e, Error::InvalidNoise { class: 0, .. }),
            "log η = {bad}: {e:?}"
        );
    }
    // Positive log-probabilities and unnormalised probabilities are allowed.
    let l = [0.5f32, 2.0, -1.0];
    assert!(SoftInfoNce::new()
        .noise(Noise::LogProbs(&l))
        .loss(z(), &dense())
        .is_ok());
    let p = [3.0f32, 1e-30, 0.5];
    assert!(SoftInfoNce::new()
        .noise(Noise::Probs(&p))
        .loss(z(), &dense())
        .is_ok());
}

// ---------------------------------------------------------------------------------------
// MalformedSparse
// ---------------------------------------------------------------------------------------

fn sparse_err(indptr: &[usize], idx: &[u32], w: &[f32]) -> Error {
    let t = Targets::Sparse(SparseTargets::new(indptr, idx, w, RowParam::Batch(0.0)));
    // The malformed structure is reported whatever the number of rows it would give.
    let e = nce_err(&SoftInfoNce::new(), z(), &t);
    assert!(matches!(e, Error::MalformedSparse(_)), "{e:?}");
    assert_same(&soft_ce_err(&SoftCrossEntropy::new(), z(), &t), &e);
    e
}

#[test]
fn malformed_sparse_empty_indptr() {
    sparse_err(&[], &[], &[]);
}

#[test]
fn malformed_sparse_indptr_not_starting_at_zero() {
    sparse_err(&[1, 2, 3], &[0, 1, 2], &[1.0, 1.0, 1.0]);
}

#[test]
fn malformed_sparse_decreasing_indptr() {
    sparse_err(&[0, 2, 1, 3], &[0, 1, 2], &[1.0, 1.0, 1.0]);
    sparse_err(&[0, 3, 2], &[0, 1, 2], &[1.0, 1.0, 1.0]);
}

#[test]
fn malformed_sparse_last_entry_not_nnz() {
    sparse_err(&[0, 1, 2], &[0, 1, 2], &[1.0, 1.0, 1.0]);
    sparse_err(&[0, 2, 4], &[0, 1, 2], &[1.0, 1.0, 1.0]);
}

#[test]
fn malformed_sparse_indices_and_weights_differ() {
    sparse_err(&[0, 1, 2], &[0, 1], &[1.0, 1.0, 1.0]);
    sparse_err(&[0, 1, 3], &[0, 1, 2], &[1.0, 1.0]);
}

// ---------------------------------------------------------------------------------------
// Upstream
// ---------------------------------------------------------------------------------------

#[test]
fn upstream_missing_with_reduction_none_and_a_gradient() {
    let t = dense();
    let nce = SoftInfoNce::new().reduction(Reduction::None);
    let sce = SoftCrossEntropy::new().reduction(Reduction::None);
    let hce = HardCrossEntropy::new().reduction(Reduction::None);
    let errs = [
        nce_err(&nce, z(), &t),
        soft_ce_err(&sce, z(), &t),
        hard_ce_err(&hce, z(), &Y),
    ];
    for e in &errs {
        assert!(matches!(e, Error::Upstream(_)), "{e:?}");
    }
    // loss_and_grad has no upstream parameter, so it is refused too.
    let mut g = vec![SENTINEL; N * C];
    let e = nce
        .loss_and_grad(z(), &t, MatMut::new(&mut g, N, C).unwrap())
        .unwrap_err();
    assert!(matches!(e, Error::Upstream(_)), "{e:?}");
    assert_untouched("grad", &g);
    // A target gradient alone also needs an upstream vector.
    let mut ga = vec![SENTINEL; N * C];
    let e = nce
        .compute(
            z(),
            &t,
            Outputs::new().grad_targets(MatMut::new(&mut ga, N, C).unwrap()),
        )
        .unwrap_err();
    assert!(matches!(e, Error::Upstream(_)), "{e:?}");
    assert_untouched("grad_targets", &ga);
    // Without a gradient, Reduction::None needs no upstream vector.
    let mut rl = vec![SENTINEL; N];
    let total = nce.compute(z(), &t, Outputs::new().row_losses(&mut rl)).unwrap();
    assert!((total - (rl[0] + rl[1])).abs() <= 1e-6 * total.abs());
}

#[test]
fn upstream_given_with_mean_or_sum() {
    let up = [1.0f32; N];
    let t = dense();
    for r in [Reduction::Mean, Reduction::Sum] {
        let nce = SoftInfoNce::new().reduction(r);
        let sce = SoftCrossEntropy::new().reduction(r);
        let hce = HardCrossEntropy::new().reduction(r);
        let errs = [
            expect_err(N, C, |out| nce.compute(z(), &t, out.upstream(&up))),
            expect_err(N, C, |out| sce.compute(z(), &t, out.upstream(&up))),
            expect_err(N, C, |out| hce.compute(z(), &Y, out.upstream(&up))),
        ];
        for e in &errs {
            assert!(matches!(e, Error::Upstream(_)), "{r:?}: {e:?}");
        }
        let req = Request {
            grad_logits: true,
            grad_targets: false,
            upstream: Some(&up),
        };
        assert_same(&ref_err(reference::soft_infonce(&nce, z(), &t, &req)), &errs[0]);
        assert_same(
            &ref_err(reference::soft_cross_entropy(&sce, z(), &t, &req)),
            &errs[1],
        );
        assert_same(
            &ref_err(reference::hard_cross_entropy(&hce, z(), &Y, &req)),
            &errs[2],
        );
        // Even with no gradient requested.
        let mut rl = vec![SENTINEL; N];
        let e = nce
            .compute(z(), &t, Outputs::new().row_losses(&mut rl).upstream(&up))
            .unwrap_err();
        assert!(matches!(e, Error::Upstream(_)), "{e:?}");
        assert_untouched("row_losses", &rl);
    }
}

// ---------------------------------------------------------------------------------------
// TargetGradientNeedsDense
// ---------------------------------------------------------------------------------------

#[test]
fn target_gradient_needs_dense() {
    let b = [1u32, 1];
    let indptr = [0usize, 1, 2];
    let idx = [0u32, 2];
    let w = [1.0f32, 1.0];
    let structured = [
        Targets::hard(&Y, 0.1),
        Targets::mixed(&Y, &b, RowParam::Batch(0.5), 0.0),
        Targets::Sparse(SparseTargets::new(&indptr, &idx, &w, RowParam::Batch(0.0))),
    ];
    let nce = SoftInfoNce::new();
    for t in &structured {
        let e = expect_err_with_target_grad(N, N, C, |out| nce.compute(z(), t, out));
        assert_eq!(e, Error::TargetGradientNeedsDense);
        let req = Request {
            grad_logits: true,
            grad_targets: true,
            upstream: None,
        };
        assert_same(&ref_err(reference::soft_infonce(&nce, z(), t, &req)), &e);
    }
    // Cross-entropy never provides a target gradient, even for dense targets.
    let sce = SoftCrossEntropy::new();
    let e = expect_err_with_target_grad(N, N, C, |out| sce.compute(z(), &dense(), out));
    assert_eq!(e, Error::TargetGradientNeedsDense);
    let req = Request {
        grad_logits: false,
        grad_targets: true,
        upstream: None,
    };
    assert_same(
        &ref_err(reference::soft_cross_entropy(&sce, z(), &dense(), &req)),
        &e,
    );
    let hce = HardCrossEntropy::new();
    let e = expect_err_with_target_grad(N, N, C, |out| hce.compute(z(), &Y, out));
    assert_eq!(e, Error::TargetGradientNeedsDense);
    assert_same(&ref_err(reference::hard_cross_entropy(&hce, z(), &Y, &req)), &e);
}

// ---------------------------------------------------------------------------------------
// UnknownBackend and BackendUnavailable
// ---------------------------------------------------------------------------------------

#[test]
fn unknown_backend() {
    for name in ["sse9", "", "avx-2", "gpu"] {
        let e = name.parse::<Backend>().unwrap_err();
        assert_eq!(e, Error::UnknownBackend(name.to_string()));
        assert_message(&e);
    }
    // Names are case-insensitive; every backend's own name parses back to it.
    assert_eq!("AVX2".parse::<Backend>(), Ok(Backend::Avx2));
    for b in Backend::ALL {
        assert_eq!(b.name().parse::<Backend>(), Ok(b));
    }
}

#[test]
fn backend_unavailable() {
    // No CPU has both NEON and x86 AVX2, so some backend is always missing.
    let missing = Backend::ALL
        .into_iter()
        .find(|b| !b.is_available())
        .expect("some backend is unavailable on any CPU");
    let t = dense();
    let nce = SoftInfoNce::new().backend(Some(missing));
    let sce = SoftCrossEntropy::new().backend(Some(missing));
    let hce = HardCrossEntropy::new().backend(Some(missing));
    let errs = [
        expect_err_with_target_grad(N, N, C, |out| nce.compute(z(), &t, out)),
        expect_err(N, C, |out| sce.compute(z(), &t, out)),
        expect_err(N, C, |out| hce.compute(z(), &Y, out)),
        nce.loss(z(), &t).unwrap_err(),
        sce.loss(z(), &t).unwrap_err(),
        hce.loss(z(), &Y).unwrap_err(),
    ];
    for e in &errs {
        assert_eq!(*e, Error::BackendUnavailable(missing));
        assert_message(e);
    }
    // Forcing an available backend (or none) works.
    for b in softnce::available_backends() {
        assert!(
            HardCrossEntropy::new().backend(Some(b)).loss(z(), &Y).is_ok(),
            "{b}"
        );
        assert!(SoftInfoNce::new().backend(Some(b)).loss(z(), &t).is_ok(), "{b}");
    }
}

// ---------------------------------------------------------------------------------------
// Every variant has a message
// ---------------------------------------------------------------------------------------

#[test]
fn every_variant_displays_a_message() {
    let all = [
        Error::ZeroClasses,
        Error::StrideTooSmall { stride: 1, cols: 2 },
        Error::BufferTooSmall {
            what: "x",
            needed: 2,
            len: 1,
        },
        Error::ShapeMismatch {
            what: "x",
            expected: 1,
            found: 2,
        },
        Error::InvalidTemperature(f32::NAN),
        Error::OffsetOutOfRange {
            offset: 1,
            rows: 2,
            targets: 2,
        },
        Error::LabelOutOfRange {
            what: "labels",
            index: 0,
            label: 9,
            classes: 3,
        },
        Error::OutOfUnitInterval {
            what: "lambda",
            index: 0,
            value: 2.0,
        },
        Error::InvalidTargetWeight {
            what: "dense target",
            row: 0,
            col: 0,
            value: -1.0,
        },
        Error::InvalidNoise { class: 0, value: 0.0 },
        Error::MalformedSparse("indptr is empty"),
        Error::Upstream("missing"),
        Error::TargetGradientNeedsDense,
        Error::BackendUnavailable(Backend::Neon),
        Error::UnknownBackend("sse9".to_string()),
    ];
    let mut seen = std::collections::HashSet::new();
    for e in &all {
        assert_message(e);
        assert!(seen.insert(e.to_string()), "two variants share the message {e}");
    }
}

// ---------------------------------------------------------------------------------------
// Non-finite logits are data, not errors
// ---------------------------------------------------------------------------------------

/// Runs all three losses on `logits` (targets: `A` / `Y`), returning the row losses and
/// gradients of each; none of them may fail.
fn run_all(logits: &[f32; 6]) -> Vec<(Vec<f32>, Vec<f32>)> {
    let zz = MatRef::new(logits, N, C).unwrap();
    let mut res = Vec::new();
    for which in 0..3 {
        let mut rl = vec![SENTINEL; N];
        let mut g = vec![SENTINEL; N * C];
        let out = Outputs::new()
            .row_losses(&mut rl)
            .grad_logits(MatMut::new(&mut g, N, C).unwrap());
        let r = match which {
            0 => SoftInfoNce::new().compute(zz, &dense(), out),
            1 => SoftCrossEntropy::new().compute(zz, &dense(), out),
            _ => HardCrossEntropy::new().compute(zz, &Y, out),
        };
        assert!(r.is_ok(), "loss {which} rejected logits {logits:?}: {r:?}");
        res.push((rl, g));
    }
    res
}

#[test]
fn non_finite_logits_are_not_errors() {
    // NaN and +inf poison their own row only (row 1 here); row 0 stays finite.
    for bad in [f32::NAN, f32::INFINITY] {
        let mut l = Z;
        l[4] = bad;
        for (which, (rl, g)) in run_all(&l).into_iter().enumerate() {
            assert!(rl[1].is_nan(), "loss {which}, logit {bad}: row loss {}", rl[1]);
            assert!(
                g[C..].iter().all(|x| x.is_nan()),
                "loss {which}, logit {bad}: gradient {g:?}"
            );
            // Row losses depend on their own logits only.
            assert!(rl[0].is_finite(), "loss {which}, logit {bad}: row 0 = {}", rl[0]);
            assert!(
                g[..C].iter().all(|x| x.is_finite()),
                "loss {which}, logit {bad}: {g:?}"
            );
        }
    }
    // −inf on a class with zero target weight (A[3] = 0) contributes nothing.
    let mut l = Z;
    l[3] = f32::NEG_INFINITY;
    for (which, (rl, g)) in run_all(&l).iter().take(2).enumerate() {
        // InfoNCE: the candidate target 0 (weight 0.7 on class 0) gets score −inf, i.e. P = 0.
        assert!(rl.iter().all(|x| x.is_finite()), "loss {which}: {rl:?}");
        assert!(g.iter().all(|x| x.is_finite()), "loss {which}: {g:?}");
    }
    // −inf on a class with positive weight makes the soft CE row +inf.
    let mut l = Z;
    l[5] = f32::NEG_INFINITY;
    let res = run_all(&l);
    assert_eq!(res[1].0[1], f32::INFINITY);
    // Hard CE: the labelled class of row 0 (class 2) masked.
    let mut l = Z;
    l[2] = f32::NEG_INFINITY;
    assert_eq!(run_all(&l)[2].0[0], f32::INFINITY);
    // A whole row of −inf: no error and no NaN.
    let mut l = Z;
    l[..C].fill(f32::NEG_INFINITY);
    for (which, (rl, g)) in run_all(&l).into_iter().enumerate() {
        assert!(!rl[0].is_nan(), "loss {which}: all −inf row gives NaN loss");
        assert!(g.iter().all(|x| !x.is_nan()), "loss {which}: NaN gradient {g:?}");
    }
    // And the reference agrees that these are data.
    let mut l = Z;
    l[0] = f32::NAN;
    let r = reference::soft_infonce(
        &SoftInfoNce::new(),
        MatRef::new(&l, N, C).unwrap(),
        &dense(),
        &Request::loss_and_grad(),
    )
    .unwrap();
    assert!(r.row_losses[0].is_nan());
}
