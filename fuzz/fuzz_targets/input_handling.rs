//! Input handling: arbitrary shapes, strides, parameters and values through every public
//! loss call. A call must return a typed error or a result; it must never panic. When it
//! succeeds on finite, moderate logits, the loss and gradient are finite; a masked (−∞)
//! logit in a row whose loss is finite gets exactly zero gradient; NaN logits give NaN rows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use softnce::{
    HardCrossEntropy, MatMut, MatRef, Noise, Outputs, Reduction, RowParam, SoftCrossEntropy, SoftInfoNce,
    SparseTargets, Targets,
};

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn small(&mut self, max: usize) -> usize {
        self.u8() as usize % (max + 1)
    }
    /// A value biased towards the hard cases.
    fn value(&mut self) -> f32 {
        match self.u8() % 16 {
            0 => 0.0,
            1 => f32::NEG_INFINITY,
            2 => f32::NAN,
            3 => f32::INFINITY,
            4 => 1e-40,
            5 => -80.0,
            6 => 80.0,
            7 => 1e4,
            8 => -1.0,
            _ => (self.u8() as f32 - 128.0) / 16.0,
        }
    }
    fn weight(&mut self) -> f32 {
        match self.u8() % 8 {
            0 => 0.0,
            1 => -0.5,
            2 => f32::NAN,
            _ => self.u8() as f32 / 255.0,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let n = b.small(6);
    let m = n + b.small(4);
    let c = b.small(19);
    let stride = c + b.small(2);
    let t = [1.0, 0.05, 20.0, 0.0, -1.0, f32::NAN, f32::INFINITY, 1e-6][b.small(7)];
    let reduction = [Reduction::Mean, Reduction::Sum, Reduction::None][b.small(2)];
    let logits: Vec<f32> = (0..n * stride).map(|_| b.value()).collect();
    let Ok(z) = MatRef::with_stride(&logits, n, c, stride) else {
        return;
    };
    let dense: Vec<f32> = (0..m * c).map(|_| b.weight()).collect();
    let labels: Vec<u32> = (0..m).map(|_| b.small(c + 1) as u32).collect();
    let partner: Vec<u32> = (0..m).map(|_| b.small(c) as u32).collect();
    let lam: Vec<f32> = (0..m).map(|_| b.weight()).collect();
    let eps = b.weight();
    let nnz = b.small(3 * m);
    let mut indptr: Vec<usize> = (0..=m).map(|j| j * nnz / m.max(1)).collect();
    if b.small(5) == 0 {
        indptr[0] = b.small(2);
    }
    let idx: Vec<u32> = (0..nnz).map(|_| b.small(c + 1) as u32).collect();
    let w: Vec<f32> = (0..nnz).map(|_| b.weight()).collect();
    let noise: Vec<f32> = (0..c).map(|_| b.weight()).collect();
    let upstream: Vec<f32> = (0..n).map(|_| b.value()).collect();
    let targets = match b.small(4) {
        0 => Targets::Dense(MatRef::new(&dense, m, c).unwrap()),
        1 => Targets::hard(&labels, eps),
        2 => Targets::mixed(&labels, &partner, RowParam::PerRow(&lam), eps),
        3 => Targets::mixed(
            &labels,
            &partner,
            RowParam::Batch(lam.first().copied().unwrap_or(0.5)),
            eps,
        ),
        _ => Targets::Sparse(SparseTargets::new(&indptr, &idx, &w, RowParam::Batch(eps / 8.0))),
    };
    let offset = b.small(m.saturating_sub(n) + 1);
    let noise = [Noise::Uniform, Noise::Probs(&noise), Noise::LogProbs(&noise)][b.small(2)];
    let want_rows = b.small(1) == 1;

    let mut grad = vec![7.0f32; n * c];
    let mut rows = vec![7.0f32; n];
    let mut gt = vec![0.0f32; m * c];
    let up = (reduction == Reduction::None).then_some(&upstream[..]);
    fn outputs<'o>(
        grad: &'o mut [f32],
        rows: &'o mut [f32],
        n: usize,
        c: usize,
        want_rows: bool,
        up: Option<&'o [f32]>,
    ) -> Outputs<'o, f32> {
        let mut o = Outputs::new().grad_logits(MatMut::new(grad, n, c).unwrap());
        if want_rows {
            o = o.row_losses(rows);
        }
        if let Some(up) = up {
            o = o.upstream(up);
        }
        o
    }

    let nce = SoftInfoNce::new()
        .temperature(t)
        .noise(noise)
        .offset(offset)
        .reduction(reduction);
    let res = nce.compute(
        z,
        &targets,
        outputs(&mut grad, &mut rows, n, c, want_rows, up).grad_targets(MatMut::new(&mut gt, m, c).unwrap()),
    );
    check(
        res, &logits, n, c, stride, t, &grad, &rows, want_rows, reduction, &upstream,
    );
    let res = SoftCrossEntropy::new()
        .temperature(t)
        .reduction(reduction)
        .compute(z, &targets, outputs(&mut grad, &mut rows, n, c, want_rows, up));
    check(
        res, &logits, n, c, stride, t, &grad, &rows, want_rows, reduction, &upstream,
    );
    let ignore = [None, Some(c as u32)][b.small(1)];
    let hce = HardCrossEntropy::new()
        .temperature(t)
        .smoothing(eps)
        .ignore_index(ignore)
        .reduction(reduction);
    let res = hce.compute(
        z,
        &labels[..n],
        outputs(&mut grad, &mut rows, n, c, want_rows, up),
    );
    check(
        res, &logits, n, c, stride, t, &grad, &rows, want_rows, reduction, &upstream,
    );
});

#[allow(clippy::too_many_arguments)]
fn check(
    res: softnce::Result<f32>,
    logits: &[f32],
    n: usize,
    c: usize,
    stride: usize,
    t: f32,
    grad: &[f32],
    rows: &[f32],
    want_rows: bool,
    reduction: Reduction,
    upstream: &[f32],
) {
    let Ok(loss) = res else { return };
    let moderate = |x: f32| x.is_finite() && (x / t).abs() <= 1e6;
    for i in 0..n {
        let z = &logits[i * stride..i * stride + c];
        let dl_ok = reduction != Reduction::None || upstream[i].is_finite();
        if want_rows {
            if z.iter().any(|x| x.is_nan()) {
                assert!(
                    rows[i].is_nan() || rows[i] == 0.0,
                    "NaN logits gave row loss {}",
                    rows[i]
                );
            }
            if z.iter().all(|&x| moderate(x)) {
                assert!(rows[i].is_finite(), "finite logits gave row loss {}", rows[i]);
            }
            if rows[i].is_finite() && dl_ok {
                for (k, &x) in z.iter().enumerate() {
                    if x == f32::NEG_INFINITY {
                        assert_eq!(grad[i * c + k], 0.0, "masked class got a gradient");
                    }
                }
            }
        }
        if z.iter().all(|&x| moderate(x)) && dl_ok {
            assert!(
                grad[i * c..(i + 1) * c].iter().all(|g| g.is_finite()),
                "non-finite gradient"
            );
        }
    }
    if logits.iter().all(|&x| moderate(x)) && n > 0 && reduction != Reduction::Mean {
        assert!(loss.is_finite(), "finite logits gave loss {loss}");
    }
}
