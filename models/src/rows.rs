//! Row-wise work between the GEMMs (normalization, outlier handling) split over the int8
//! kernels' thread pool ([`qtier_kernels::run_parts`]), whose workers are spinning right after a
//! GEMM: each part gets a balanced range of rows, so results do not depend on the split.

use std::ops::Range;
use std::sync::Mutex;

/// Elements (rows x row length) from which row-wise work is split over the kernels' pool:
/// about 10 us of work on one core, against 0.1-0.3 us to hand half of it to the other.
pub(crate) const PAR_MIN_ELEMS: usize = 16 * 1024;

/// Parts to split `rows` rows of `row_len` elements into.
pub(crate) fn row_parts(rows: usize, row_len: usize) -> usize {
    if rows.saturating_mul(row_len) < PAR_MIN_ELEMS { 1 } else { qtier_kernels::parallelism().min(rows).max(1) }
}

/// Row `part` of `parts` balanced ranges of `0..rows`.
pub(crate) fn row_range(rows: usize, parts: usize, part: usize) -> Range<usize> {
    rows * part / parts..rows * (part + 1) / parts
}

/// `f` over `parts` balanced ranges of `0..rows` on the kernels' pool, the results in range order.
pub(crate) fn map_row_ranges<T: Send>(rows: usize, parts: usize, f: impl Fn(Range<usize>) -> T + Sync) -> Vec<T> {
    if parts <= 1 {
        return vec![f(0..rows)];
    }
    let results: Vec<Mutex<Option<T>>> = (0..parts).map(|_| Mutex::new(None)).collect();
    qtier_kernels::run_parts(parts, &|part| {
        let value = f(row_range(rows, parts, part));
        *results[part].lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
    });
    results
        .into_iter()
        .map(|slot| slot.into_inner().unwrap_or_else(|e| e.into_inner()).expect("run_parts runs every part"))
        .collect()
}

/// `f(rows, their values)` over `parts` balanced row ranges of the row-major `values` (`row_len`
/// per row) on the kernels' pool; each part gets its own rows.
pub(crate) fn for_row_chunks(
    values: &mut [f32],
    row_len: usize,
    parts: usize,
    f: impl Fn(Range<usize>, &mut [f32]) + Sync,
) {
    let rows = values.len() / row_len.max(1);
    for_row_ranges(values, row_len, parts, |part| row_range(rows, parts, part), f);
}

/// [`for_row_chunks`] with the rows of part `part` given by `range_of(part)`: consecutive ranges
/// from row 0, together covering every row of `values`.
pub(crate) fn for_row_ranges(
    values: &mut [f32],
    row_len: usize,
    parts: usize,
    range_of: impl Fn(usize) -> Range<usize>,
    f: impl Fn(Range<usize>, &mut [f32]) + Sync,
) {
    if parts <= 1 {
        return f(0..values.len() / row_len.max(1), values);
    }
    // Each part locks only its own rows, so the locks are never contended.
    let mut chunks = Vec::with_capacity(parts);
    let mut rest = values;
    for part in 0..parts {
        let range = range_of(part);
        let (chunk, tail) = rest.split_at_mut(range.len() * row_len);
        chunks.push(Mutex::new((range, chunk)));
        rest = tail;
    }
    qtier_kernels::run_parts(parts, &|part| {
        let mut guard = chunks[part].lock().unwrap_or_else(|e| e.into_inner());
        let (range, chunk) = &mut *guard;
        f(range.clone(), chunk);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_splits_cover_every_row_once_in_order() {
        for rows in [1, 2, 7, 128] {
            for parts in 1..=5 {
                let parts = parts.min(rows);
                let ranges = map_row_ranges(rows, parts, |range| range);
                assert_eq!(ranges.iter().flat_map(|r| r.clone()).collect::<Vec<_>>(), (0..rows).collect::<Vec<_>>());
                let mut values = vec![0.0f32; rows * 3];
                for_row_chunks(&mut values, 3, parts, |range, chunk| {
                    for (row, value) in range.zip(chunk.chunks_exact_mut(3)) {
                        value.fill(row as f32 + 1.0);
                    }
                });
                let expected: Vec<f32> = (0..rows).flat_map(|row| [row as f32 + 1.0; 3]).collect();
                assert_eq!(values, expected, "{rows} rows in {parts} parts");
            }
        }
    }
}
