//! A first look at softnce: every loss on one small batch, with its gradient norm.
//!
//! Run with `cargo run --release --example demo`. The batch is 8 rows over 5 classes, made
//! from a fixed seed; the targets are hard labels, label-smoothed labels, MixUp pairs with
//! the reversed batch, and a k-sparse "distillation" form of the same MixUp rows.

use softnce::{
    HardCrossEntropy, MatMut, MatRef, Noise, Outputs, Reduction, RowParam, SoftCrossEntropy, SoftInfoNce,
    SparseTargets, Targets,
};

/// A tiny deterministic generator (xorshift64*), so the demo needs no dependency.
struct Rng(u64);
impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32) / (1u64 << 24) as f32
    }
}

fn norm(g: &[f32]) -> f32 {
    g.iter().map(|x| x * x).sum::<f32>().sqrt()
}

fn main() -> Result<(), softnce::Error> {
    let (n, c) = (8usize, 5usize);
    let mut rng = Rng(0x5eed);
    let logits: Vec<f32> = (0..n * c).map(|_| 4.0 * rng.next_f32() - 2.0).collect();
    let labels: Vec<u32> = (0..n as u32).map(|i| (i * 3 + 1) % c as u32).collect();
    let partner: Vec<u32> = labels.iter().rev().copied().collect(); // MixUp: reversed batch
    let lambda = 0.7f32;
    let eps = 0.1f32;
    let prior = [0.35f32, 0.25, 0.2, 0.12, 0.08];

    // The same MixUp rows as CSR entries plus the smoothing floor ε/C.
    let indptr: Vec<usize> = (0..=n).map(|j| 2 * j).collect();
    let indices: Vec<u32> = labels.iter().zip(&partner).flat_map(|(&a, &b)| [a, b]).collect();
    let weights: Vec<f32> = (0..n)
        .flat_map(|_| [(1.0 - eps) * lambda, (1.0 - eps) * (1.0 - lambda)])
        .collect();
    let sparse = SparseTargets::new(&indptr, &indices, &weights, RowParam::Batch(eps / c as f32));

    let z = MatRef::new(&logits, n, c)?;
    let hard = Targets::hard(&labels, 0.0);
    let smoothed = Targets::hard(&labels, eps);
    let mixup = Targets::mixed(&labels, &partner, RowParam::Batch(lambda), eps);
    let sparse = Targets::Sparse(sparse);

    println!("softnce demo: N = {n} rows, C = {c} classes, temperature 1, mean reduction\n");
    println!("{:<48} {:>10} {:>12}", "loss (targets)", "loss", "|dL/dz|");
    let mut grad = vec![0.0f32; n * c];
    let mut show = |name: &str, f: &mut dyn FnMut(MatMut<'_, f32>) -> softnce::Result<f32>| {
        let loss = f(MatMut::new(&mut grad, n, c).unwrap()).unwrap();
        println!("{name:<48} {loss:>10.5} {:>12.5}", norm(&grad));
    };

    let uniform = SoftInfoNce::new();
    let with_prior = SoftInfoNce::new().noise(Noise::Probs(&prior));
    show("hard InfoNCE (one-hot, eta uniform)", &mut |g| {
        uniform.loss_and_grad(z, &hard, g)
    });
    show("hard InfoNCE (one-hot, eta = prior)", &mut |g| {
        with_prior.loss_and_grad(z, &hard, g)
    });
    show("soft InfoNCE (label smoothing 0.1)", &mut |g| {
        uniform.loss_and_grad(z, &smoothed, g)
    });
    show("soft InfoNCE (MixUp 0.7 + smoothing 0.1)", &mut |g| {
        uniform.loss_and_grad(z, &mixup, g)
    });
    show("soft InfoNCE (same rows as sparse CSR)", &mut |g| {
        uniform.loss_and_grad(z, &sparse, g)
    });
    let ce = SoftCrossEntropy::new();
    show("soft CE (MixUp 0.7 + smoothing 0.1)", &mut |g| {
        ce.loss_and_grad(z, &mixup, g)
    });
    show("soft CE (same rows as sparse CSR)", &mut |g| {
        ce.loss_and_grad(z, &sparse, g)
    });
    let hce = HardCrossEntropy::new().smoothing(eps);
    show("hard CE (label smoothing 0.1)", &mut |g| {
        hce.loss_and_grad(z, &labels, g)
    });
    let mut ignored = labels.clone();
    ignored[0] = u32::MAX;
    let hce_ignore = hce.ignore_index(Some(u32::MAX));
    show("hard CE (smoothing 0.1, row 0 ignored)", &mut |g| {
        hce_ignore.loss_and_grad(z, &ignored, g)
    });

    // Per-row losses with Reduction::None.
    let mut rows = vec![0.0f32; n];
    uniform
        .reduction(Reduction::None)
        .compute(z, &mixup, Outputs::new().row_losses(&mut rows))?;
    println!("\nper-row soft InfoNCE losses (MixUp): {rows:.3?}");
    Ok(())
}
