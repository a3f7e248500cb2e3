//! Criterion benchmarks of the public loss calls (loss + gradient, f32, mean reduction).
//!
//! `cargo bench --bench losses`. Throughput is reported in logit elements per second.
//! Every kernel runs once per backend this CPU has (`<group>/<kernel>/<backend>`);
//! InfoNCE throughput counts its 4·N·M·C flops as elements. InfoNCE with structured targets
//! still runs on the scalar f64 reference and is measured at a small shape.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use softnce::{
    available_backends, HardCrossEntropy, MatMut, MatRef, RowParam, SoftCrossEntropy, SoftInfoNce, Targets,
};
use std::hint::black_box;

fn data(n: usize, c: usize) -> (Vec<f32>, Vec<f32>, Vec<u32>, Vec<u32>) {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32) / (1u64 << 24) as f32
    };
    let logits: Vec<f32> = (0..n * c).map(|_| 8.0 * next() - 4.0).collect();
    let mut dense: Vec<f32> = (0..n * c).map(|_| next()).collect();
    for row in dense.chunks_mut(c) {
        let s: f32 = row.iter().sum();
        row.iter_mut().for_each(|v| *v /= s);
    }
    let labels: Vec<u32> = (0..n).map(|i| ((i * 7919) % c) as u32).collect();
    let partner: Vec<u32> = labels.iter().rev().copied().collect();
    (logits, dense, labels, partner)
}

fn cross_entropy(cr: &mut Criterion) {
    let mut group = cr.benchmark_group("cross_entropy");
    for &(n, c) in &[(256usize, 1000usize), (1024, 10000)] {
        let (logits, dense, labels, partner) = data(n, c);
        let z = MatRef::new(&logits, n, c).unwrap();
        let mut grad = vec![0.0f32; n * c];
        group.throughput(Throughput::Elements((n * c) as u64));
        let dense_t = Targets::Dense(MatRef::new(&dense, n, c).unwrap());
        let mixed = Targets::mixed(&labels, &partner, RowParam::Batch(0.7), 0.1);
        for backend in available_backends() {
            let id = |what: &str| BenchmarkId::new(format!("{what}/{backend}"), format!("{n}x{c}"));
            for (name, t) in [("soft_ce_dense", &dense_t), ("soft_ce_mixed", &mixed)] {
                group.bench_function(id(name), |b| {
                    b.iter(|| {
                        SoftCrossEntropy::new()
                            .backend(Some(backend))
                            .loss_and_grad(black_box(z), t, MatMut::new(&mut grad, n, c).unwrap())
                            .unwrap()
                    })
                });
            }
            group.bench_function(id("hard_ce_ls"), |b| {
                b.iter(|| {
                    HardCrossEntropy::new()
                        .smoothing(0.1)
                        .backend(Some(backend))
                        .loss_and_grad(black_box(z), &labels, MatMut::new(&mut grad, n, c).unwrap())
                        .unwrap()
                })
            });
        }
    }
    group.finish();
}

fn infonce(cr: &mut Criterion) {
    let mut group = cr.benchmark_group("soft_infonce");
    group.sample_size(10);
    for &(n, c) in &[(256usize, 1000usize)] {
        let (logits, dense, labels, partner) = data(n, c);
        let z = MatRef::new(&logits, n, c).unwrap();
        let mut grad = vec![0.0f32; n * c];
        // 4·N·M·C flops for loss + gradient (M = N).
        group.throughput(Throughput::Elements((4 * n * n * c) as u64));
        let dense_t = Targets::Dense(MatRef::new(&dense, n, c).unwrap());
        for backend in available_backends() {
            group.bench_function(
                BenchmarkId::new(format!("dense/{backend}"), format!("{n}x{n}x{c}")),
                |b| {
                    b.iter(|| {
                        SoftInfoNce::new()
                            .backend(Some(backend))
                            .loss_and_grad(black_box(z), &dense_t, MatMut::new(&mut grad, n, c).unwrap())
                            .unwrap()
                    })
                },
            );
        }
        // Structured targets still run on the f64 reference (O(N·M·C)): a small shape.
        let (ns, cs) = (64usize, 100usize);
        let (logits_s, _, labels_s, partner_s) = data(ns, cs);
        let _ = (&labels, &partner);
        let zs = MatRef::new(&logits_s, ns, cs).unwrap();
        let mixed = Targets::mixed(&labels_s, &partner_s, RowParam::Batch(0.7), 0.1);
        let mut grad_s = vec![0.0f32; ns * cs];
        group.bench_function(
            BenchmarkId::new("mixed/reference", format!("{ns}x{ns}x{cs}")),
            |b| {
                b.iter(|| {
                    SoftInfoNce::new()
                        .loss_and_grad(black_box(zs), &mixed, MatMut::new(&mut grad_s, ns, cs).unwrap())
                        .unwrap()
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, cross_entropy, infonce);
criterion_main!(benches);
