using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using static Loom.Core.Kernels.SimdHelpers;

namespace Loom.Core.Kernels;

/// <summary>
/// Row · activation dots for the 32-element block types against Q8_0/Q8_1-quantized activations:
/// Σ_b d_w·d_x·(Σ q_w·q_x) (+ m_w·s_x for types with a min), integer inner sums as in llama.cpp.
/// </summary>
internal static unsafe class Block32Kernels
{
    public static float DotPortable<T>(byte* row, int blocks, in ActivationRow x) where T : unmanaged, IBlock32Format
    {
        sbyte* levels = stackalloc sbyte[32];
        float sum = 0, minSum = 0;
        sbyte* xq = x.Qs;
        for (int b = 0; b < blocks; b++, row += T.BlockBytes, xq += 32)
        {
            T.UnpackScalar(row, levels);
            int isum = 0;
            for (int j = 0; j < 32; j++) isum += levels[j] * xq[j];
            sum += T.Scale(row) * x.D[b] * isum;
            if (T.HasMin) minSum += T.Min(row) * x.S[b];
        }
        return sum + minSum;
    }


    // The SIMD kernels here serve Q4_1, Q5_1 and IQ4_NL; Q4_0, Q5_0 and Q8_0 use RowLaneKernels (any format works here).
    // Batch invariance: the one-token kernels compute exactly one column of the four-token kernels (one accumulator per
    // token, the same lane layout, block order and reductions), so a token's result never depends on how many tokens
    // share a call or where it sits among them. Blocks go in groups of eight, leftovers take one-block steps.
    // Q4_0/Q5_0 levels are centred (−8/−16 subtracted in the bytes) and take the signed-level path like Q8_0, so they
    // need no min term; only Q4_1/Q5_1 add Σ m_w·s_x, their eight fp16 mins gathered and converted at once.
    // The one-token kernels convert each scale as a scalar (the integer units are idle while the vector units are the
    // bottleneck); the four-token kernels convert eight at once and broadcast each block's lane. Both conversions are
    // exact, so the per-block scale products are the same floats.

    /// <summary>Whether the type's levels are unsigned with a separate fp16 min (Q4_1, Q5_1) rather than signed.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool StoredMin<T>() where T : unmanaged, IBlock32Format => T.HasMin && T.MinPerScale == 0;

    /// <summary>A block's 32 levels: signed (offset removed) unless the type stores a min.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<sbyte> Levels<T>(byte* block) where T : unmanaged, IBlock32Format =>
        T.MinPerScale != 0 ? T.Unpack(block) + Vector256.Create((sbyte)T.MinPerScale) : T.Unpack(block);

    /// <summary>The fp16 fields at <paramref name="offset"/> of eight consecutive blocks, as floats.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> EightHalves<T>(byte* row, int offset) where T : unmanaged, IBlock32Format
    {
        var byteOffsets = Vector256.Create(0, 1, 2, 3, 4, 5, 6, 7) * T.BlockBytes;
        var raw = Avx2.GatherVector256((int*)(row + offset), byteOffsets, 1);
        return HalfToSingle(raw.AsUInt32() & Vector256.Create(0xFFFFu));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Lane(Vector256<float> v, int k) => Avx2.PermuteVar8x32(v, Vector256.Create(k));

    /// <summary>Integer dot of one block with 32 activation levels: |w|·sign(x, w) for signed levels, w·x for unsigned ones.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> BlockProduct<T>(Vector256<byte> magnitudes, Vector256<sbyte> w, sbyte* xq) where T : unmanaged, IBlock32Format
    {
        var xv = Vector256.Load(xq);
        return Avx.ConvertToVector256Single(DotUnsignedSigned(magnitudes, StoredMin<T>() ? xv : Avx2.Sign(xv, w)));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<byte> Magnitudes<T>(Vector256<sbyte> w) where T : unmanaged, IBlock32Format =>
        StoredMin<T>() ? w.AsByte() : Avx2.Abs(w);

    /// <summary>
    /// The fp16 at <paramref name="p"/> as a float in five operations, exact for finite halves (the sign-extended bits
    /// masked into float position and scaled by 2^112; subnormals included). Inf/NaN would come out finite, so each
    /// call sets bit 15 of <paramref name="specials"/> for those and the caller redoes the row the general way.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float FiniteHalf(byte* p, ref int specials)
    {
        int bits = *(short*)p;
        specials |= (bits & 0x7fff) + 0x400;
        return BitConverter.Int32BitsToSingle((bits << 13) & unchecked((int)0x8FFFE000)) * 5.192296858534828e33f;
    }

    /// <summary>Integer dots of two blocks at once (sixteen int32 sums as floats). AVX-512 has no vpsignb, so w's sign moves onto x with a select (x is never −128).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> PairProduct<T>(Vector512<sbyte> w, Vector512<sbyte> xv) where T : unmanaged, IBlock32Format
    {
        Vector512<short> pairs = StoredMin<T>()
            ? Avx512BW.MultiplyAddAdjacent(w.AsByte(), xv)
            : Avx512BW.MultiplyAddAdjacent(Avx512BW.Abs(w), Vector512.ConditionalSelect(Vector512.LessThan(w, Vector512<sbyte>.Zero), -xv, xv));
        return Avx512F.ConvertToVector512Single(Avx512BW.MultiplyAddAdjacent(pairs, Vector512.Create((short)1)));
    }

    // ---- one token ----

    public static float DotAvx2<T>(byte* row, int blocks, in ActivationRow x) where T : unmanaged, IBlock32Format =>
        DotAvx2<T>(row, blocks, x, exactScales: false);

    /// <summary>The general fp16 conversion for every scale: rows where <see cref="FiniteHalf"/> met Inf or NaN.</summary>
    private static float DotAvx2ExactScales<T>(byte* row, int blocks, in ActivationRow x) where T : unmanaged, IBlock32Format =>
        DotAvx2<T>(row, blocks, x, exactScales: true);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float DotAvx2<T>(byte* row, int blocks, in ActivationRow x, bool exactScales) where T : unmanaged, IBlock32Format
    {
        byte* start = row;
        Vector256<float> acc = default, odd = default, minAcc = default; // even and odd blocks: two independent FMA chains
        int specials = 0;
        sbyte* xq = x.Qs;
        int b = 0;
        for (; b + 8 <= blocks; b += 8)
        {
            if (StoredMin<T>()) minAcc = Fma.MultiplyAdd(EightHalves<T>(row, 2), Vector256.Load(x.S + b), minAcc);
            for (int k = 0; k < 8; k += 2, row += 2 * T.BlockBytes, xq += 64)
            {
                var w0 = Levels<T>(row);
                var w1 = Levels<T>(row + T.BlockBytes);
                float d0 = exactScales ? T.Scale(row) : FiniteHalf(row, ref specials);
                float d1 = exactScales ? T.Scale(row + T.BlockBytes) : FiniteHalf(row + T.BlockBytes, ref specials);
                acc = Fma.MultiplyAdd(BlockProduct<T>(Magnitudes<T>(w0), w0, xq), Vector256.Create(d0 * x.D[b + k]), acc);
                odd = Fma.MultiplyAdd(BlockProduct<T>(Magnitudes<T>(w1), w1, xq + 32), Vector256.Create(d1 * x.D[b + k + 1]), odd);
            }
        }
        if (!exactScales && (specials & 0x8000) != 0) return DotAvx2ExactScales<T>(start, blocks, x);
        acc += odd;
        float tail = 0;
        for (; b < blocks; b++, row += T.BlockBytes, xq += 32)
        {
            var w = Levels<T>(row);
            acc = Fma.MultiplyAdd(BlockProduct<T>(Magnitudes<T>(w), w, xq), Vector256.Create(T.Scale(row) * x.D[b]), acc);
            if (StoredMin<T>()) tail += T.Min(row) * x.S[b];
        }
        return Sum(acc) + Sum(minAcc) + tail;
    }

    /// <summary>Two blocks per 512-bit register (same grouping by eight; the leftovers take 256-bit steps).</summary>
    public static float DotAvx512<T>(byte* row, int blocks, in ActivationRow x) where T : unmanaged, IBlock32Format
    {
        byte* start = row;
        var acc = Vector512<float>.Zero;
        Vector256<float> tailAcc = default, minAcc = default;
        int specials = 0;
        sbyte* xq = x.Qs;
        int b = 0;
        for (; b + 8 <= blocks; b += 8)
        {
            if (StoredMin<T>()) minAcc = Fma.MultiplyAdd(EightHalves<T>(row, 2), Vector256.Load(x.S + b), minAcc);
            for (int k = 0; k < 8; k += 2, row += 2 * T.BlockBytes, xq += 64)
            {
                var w = Vector512.Create(Levels<T>(row), Levels<T>(row + T.BlockBytes));
                float d0 = FiniteHalf(row, ref specials), d1 = FiniteHalf(row + T.BlockBytes, ref specials);
                var pair = Vector512.Create(Vector256.Create(d0 * x.D[b + k]), Vector256.Create(d1 * x.D[b + k + 1]));
                acc = Avx512F.FusedMultiplyAdd(PairProduct<T>(w, Vector512.Load(xq)), pair, acc);
            }
        }
        // the 256-bit kernel sums the same products in another order: this path's exact-scale fallback is its own
        if ((specials & 0x8000) != 0) return DotAvx512ExactScales<T>(start, blocks, x);
        float tail = 0;
        for (; b < blocks; b++, row += T.BlockBytes, xq += 32)
        {
            var w = Levels<T>(row);
            tailAcc = Fma.MultiplyAdd(BlockProduct<T>(Magnitudes<T>(w), w, xq), Vector256.Create(T.Scale(row) * x.D[b]), tailAcc);
            if (StoredMin<T>()) tail += T.Min(row) * x.S[b];
        }
        return Vector512.Sum(acc) + Sum(tailAcc) + Sum(minAcc) + tail;
    }

    /// <summary>As <see cref="DotAvx512{T}"/> with the general fp16 conversion: one column of <see cref="Dot4Avx512{T}"/>.</summary>
    private static float DotAvx512ExactScales<T>(byte* row, int blocks, in ActivationRow x) where T : unmanaged, IBlock32Format
    {
        var one = x;
        float result;
        Dot4Avx512<T>(row, blocks, &one, &result, columns: 1);
        return result;
    }

    // ---- four tokens per pass: each weight block is unpacked once and dotted with four activation rows ----

    public static void Dot4Avx2<T>(byte* row, int blocks, ActivationRow* x, float* result) where T : unmanaged, IBlock32Format
    {
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default; // even blocks of a group, then the sums
        Vector256<float> c0 = default, c1 = default, c2 = default, c3 = default; // odd blocks
        Vector256<float> m0 = default, m1 = default, m2 = default, m3 = default;
        sbyte* q0 = x[0].Qs, q1 = x[1].Qs, q2 = x[2].Qs, q3 = x[3].Qs;
        int b = 0;
        for (; b + 8 <= blocks; b += 8)
        {
            var weightScales = EightHalves<T>(row, 0);
            var s0 = weightScales * Vector256.Load(x[0].D + b);
            var s1 = weightScales * Vector256.Load(x[1].D + b);
            var s2 = weightScales * Vector256.Load(x[2].D + b);
            var s3 = weightScales * Vector256.Load(x[3].D + b);
            if (StoredMin<T>())
            {
                var mins = EightHalves<T>(row, 2);
                m0 = Fma.MultiplyAdd(mins, Vector256.Load(x[0].S + b), m0);
                m1 = Fma.MultiplyAdd(mins, Vector256.Load(x[1].S + b), m1);
                m2 = Fma.MultiplyAdd(mins, Vector256.Load(x[2].S + b), m2);
                m3 = Fma.MultiplyAdd(mins, Vector256.Load(x[3].S + b), m3);
            }
            for (int k = 0; k < 8; k += 2, row += 2 * T.BlockBytes)
            {
                var w = Levels<T>(row);
                var magnitudes = Magnitudes<T>(w);
                int o = 32 * (b + k);
                a0 = Fma.MultiplyAdd(BlockProduct<T>(magnitudes, w, q0 + o), Lane(s0, k), a0);
                a1 = Fma.MultiplyAdd(BlockProduct<T>(magnitudes, w, q1 + o), Lane(s1, k), a1);
                a2 = Fma.MultiplyAdd(BlockProduct<T>(magnitudes, w, q2 + o), Lane(s2, k), a2);
                a3 = Fma.MultiplyAdd(BlockProduct<T>(magnitudes, w, q3 + o), Lane(s3, k), a3);
                w = Levels<T>(row + T.BlockBytes);
                magnitudes = Magnitudes<T>(w);
                o += 32;
                c0 = Fma.MultiplyAdd(BlockProduct<T>(magnitudes, w, q0 + o), Lane(s0, k + 1), c0);
                c1 = Fma.MultiplyAdd(BlockProduct<T>(magnitudes, w, q1 + o), Lane(s1, k + 1), c1);
                c2 = Fma.MultiplyAdd(BlockProduct<T>(magnitudes, w, q2 + o), Lane(s2, k + 1), c2);
                c3 = Fma.MultiplyAdd(BlockProduct<T>(magnitudes, w, q3 + o), Lane(s3, k + 1), c3);
            }
        }
        a0 += c0;
        a1 += c1;
        a2 += c2;
        a3 += c3;
        float t0 = 0, t1 = 0, t2 = 0, t3 = 0;
        for (; b < blocks; b++, row += T.BlockBytes)
        {
            var w = Levels<T>(row);
            var magnitudes = Magnitudes<T>(w);
            float dw = T.Scale(row);
            int o = 32 * b;
            a0 = Fma.MultiplyAdd(BlockProduct<T>(magnitudes, w, q0 + o), Vector256.Create(dw * x[0].D[b]), a0);
            a1 = Fma.MultiplyAdd(BlockProduct<T>(magnitudes, w, q1 + o), Vector256.Create(dw * x[1].D[b]), a1);
            a2 = Fma.MultiplyAdd(BlockProduct<T>(magnitudes, w, q2 + o), Vector256.Create(dw * x[2].D[b]), a2);
            a3 = Fma.MultiplyAdd(BlockProduct<T>(magnitudes, w, q3 + o), Vector256.Create(dw * x[3].D[b]), a3);
            if (StoredMin<T>())
            {
                float mw = T.Min(row);
                t0 += mw * x[0].S[b];
                t1 += mw * x[1].S[b];
                t2 += mw * x[2].S[b];
                t3 += mw * x[3].S[b];
            }
        }
        result[0] = Sum(a0) + Sum(m0) + t0;
        result[1] = Sum(a1) + Sum(m1) + t1;
        result[2] = Sum(a2) + Sum(m2) + t2;
        result[3] = Sum(a3) + Sum(m3) + t3;
    }

    public static void Dot4Avx512<T>(byte* row, int blocks, ActivationRow* x, float* result) where T : unmanaged, IBlock32Format =>
        Dot4Avx512<T>(row, blocks, x, result, columns: 4);

    /// <summary>
    /// The 512-bit four-token kernel; with <paramref name="columns"/> = 1 only the first column is real (the others repeat
    /// it), which the one-token kernel's rare exact-scale fallback uses.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Dot4Avx512<T>(byte* row, int blocks, ActivationRow* x, float* result, int columns) where T : unmanaged, IBlock32Format
    {
        ActivationRow x0 = x[0], x1 = x[columns > 1 ? 1 : 0], x2 = x[columns > 1 ? 2 : 0], x3 = x[columns > 1 ? 3 : 0];
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
        Vector256<float> m0 = default, m1 = default, m2 = default, m3 = default;
        sbyte* q0 = x0.Qs, q1 = x1.Qs, q2 = x2.Qs, q3 = x3.Qs;
        int b = 0;
        for (; b + 8 <= blocks; b += 8)
        {
            var weightScales = EightHalves<T>(row, 0);
            var s0 = weightScales * Vector256.Load(x0.D + b);
            var s1 = weightScales * Vector256.Load(x1.D + b);
            var s2 = weightScales * Vector256.Load(x2.D + b);
            var s3 = weightScales * Vector256.Load(x3.D + b);
            if (StoredMin<T>())
            {
                var mins = EightHalves<T>(row, 2);
                m0 = Fma.MultiplyAdd(mins, Vector256.Load(x0.S + b), m0);
                m1 = Fma.MultiplyAdd(mins, Vector256.Load(x1.S + b), m1);
                m2 = Fma.MultiplyAdd(mins, Vector256.Load(x2.S + b), m2);
                m3 = Fma.MultiplyAdd(mins, Vector256.Load(x3.S + b), m3);
            }
            for (int k = 0; k < 8; k += 2, row += 2 * T.BlockBytes)
            {
                var w = Vector512.Create(Levels<T>(row), Levels<T>(row + T.BlockBytes));
                int o = 32 * (b + k);
                a0 = Avx512F.FusedMultiplyAdd(PairProduct<T>(w, Vector512.Load(q0 + o)), Vector512.Create(Lane(s0, k), Lane(s0, k + 1)), a0);
                a1 = Avx512F.FusedMultiplyAdd(PairProduct<T>(w, Vector512.Load(q1 + o)), Vector512.Create(Lane(s1, k), Lane(s1, k + 1)), a1);
                a2 = Avx512F.FusedMultiplyAdd(PairProduct<T>(w, Vector512.Load(q2 + o)), Vector512.Create(Lane(s2, k), Lane(s2, k + 1)), a2);
                a3 = Avx512F.FusedMultiplyAdd(PairProduct<T>(w, Vector512.Load(q3 + o)), Vector512.Create(Lane(s3, k), Lane(s3, k + 1)), a3);
            }
        }
        Vector256<float> r0 = default, r1 = default, r2 = default, r3 = default;
        float t0 = 0, t1 = 0, t2 = 0, t3 = 0;
        for (; b < blocks; b++, row += T.BlockBytes)
        {
            var w = Levels<T>(row);
            var magnitudes = Magnitudes<T>(w);
            float dw = T.Scale(row);
            int o = 32 * b;
            r0 = Fma.MultiplyAdd(BlockProduct<T>(magnitudes, w, q0 + o), Vector256.Create(dw * x0.D[b]), r0);
            r1 = Fma.MultiplyAdd(BlockProduct<T>(magnitudes, w, q1 + o), Vector256.Create(dw * x1.D[b]), r1);
            r2 = Fma.MultiplyAdd(BlockProduct<T>(magnitudes, w, q2 + o), Vector256.Create(dw * x2.D[b]), r2);
            r3 = Fma.MultiplyAdd(BlockProduct<T>(magnitudes, w, q3 + o), Vector256.Create(dw * x3.D[b]), r3);
            if (StoredMin<T>())
            {
                float mw = T.Min(row);
                t0 += mw * x0.S[b];
                t1 += mw * x1.S[b];
                t2 += mw * x2.S[b];
                t3 += mw * x3.S[b];
            }
        }
        result[0] = Vector512.Sum(a0) + Sum(r0) + Sum(m0) + t0;
        if (columns == 1) return;
        result[1] = Vector512.Sum(a1) + Sum(r1) + Sum(m1) + t1;
        result[2] = Vector512.Sum(a2) + Sum(r2) + Sum(m2) + t2;
        result[3] = Vector512.Sum(a3) + Sum(r3) + Sum(m3) + t3;
    }
}
