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

    // The SIMD paths take blocks in groups of eight. Q4_1/Q5_1's eight fp16 mins are gathered and converted at once (their
    // min·s terms are a separate dot of two 8-vectors); Q4_0/Q5_0's mins are −8/−16 times the scale the block needs anyway,
    // so the one-token kernels sum d·s beside it (a gather there measured slower than the offset it saves). Scales stay scalar in the one-token kernels: their conversion runs
    // on the integer units while the vector units are the bottleneck (measured faster on Zen 4); the four-token kernels
    // convert eight scales at once and broadcast each block's from that register. Leftover blocks take one-block steps.

    /// <summary>The fp16 fields at <paramref name="offset"/> of eight consecutive blocks, as floats.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> EightHalves<T>(byte* row, int offset) where T : unmanaged, IBlock32Format
    {
        var byteOffsets = Vector256.Create(0, 1, 2, 3, 4, 5, 6, 7) * T.BlockBytes;
        var raw = Avx2.GatherVector256((int*)(row + offset), byteOffsets, 1);
        return HalfToSingle(raw.AsUInt32() & Vector256.Create(0xFFFFu));
    }

    /// <summary>The mins of eight consecutive blocks: stored fp16 fields, or a multiple of the scales for Q4_0/Q5_0.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> EightMins<T>(byte* row) where T : unmanaged, IBlock32Format =>
        T.MinPerScale != 0 ? EightHalves<T>(row, 0) * Vector256.Create(T.MinPerScale) : EightHalves<T>(row, 2);

    /// <summary>As <see cref="EightMins{T}(byte*)"/> where the eight scales are already at hand.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> EightMins<T>(byte* row, Vector256<float> scales) where T : unmanaged, IBlock32Format =>
        T.MinPerScale != 0 ? scales * Vector256.Create(T.MinPerScale) : EightHalves<T>(row, 2);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Lane(Vector256<float> v, int k) => Avx2.PermuteVar8x32(v, Vector256.Create(k));

    /// <summary>Integer dot of one block with 32 activation levels: |w|·sign(x, w) for signed levels, w·x for unsigned ones.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> BlockProduct<T>(Vector256<byte> magnitudes, Vector256<sbyte> w, sbyte* xq) where T : unmanaged, IBlock32Format
    {
        var xv = Vector256.Load(xq);
        return Avx.ConvertToVector256Single(DotUnsignedSigned(magnitudes, T.HasMin ? xv : Avx2.Sign(xv, w)));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<byte> Magnitudes<T>(Vector256<sbyte> w) where T : unmanaged, IBlock32Format =>
        T.HasMin ? w.AsByte() : Avx2.Abs(w);

    public static float DotAvx2<T>(byte* row, int blocks, in ActivationRow x) where T : unmanaged, IBlock32Format =>
        DotAvx2<T>(row, blocks, x, exactScales: false);

    /// <summary>The general fp16 conversion for every scale: rows where <see cref="FiniteHalf"/> met Inf or NaN.</summary>
    private static float DotAvx2ExactScales<T>(byte* row, int blocks, in ActivationRow x) where T : unmanaged, IBlock32Format =>
        DotAvx2<T>(row, blocks, x, exactScales: true);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float DotAvx2<T>(byte* row, int blocks, in ActivationRow x, bool exactScales) where T : unmanaged, IBlock32Format
    {
        // two accumulators so consecutive blocks' FMAs do not wait on each other
        byte* start = row;
        Vector256<float> acc = default, acc1 = default, minAcc = default;
        float tail = 0;
        int specials = 0;
        sbyte* xq = x.Qs;
        float* xd = x.D;
        int b = 0;
        float scaledSums = 0; // Σ d_w·s_x of Q4_0/Q5_0, whose mins are a fixed multiple of the scale
        for (; b + 8 <= blocks; b += 8)
        {
            if (T.HasMin && T.MinPerScale == 0) minAcc = Fma.MultiplyAdd(EightMins<T>(row), Vector256.Load(x.S + b), minAcc);
            for (int k = 0; k < 8; k += 2, row += 2 * T.BlockBytes, xq += 64)
            {
                var w0 = T.Unpack(row);
                var w1 = T.Unpack(row + T.BlockBytes);
                float d0 = exactScales ? T.Scale(row) : FiniteHalf(row, ref specials);
                float d1 = exactScales ? T.Scale(row + T.BlockBytes) : FiniteHalf(row + T.BlockBytes, ref specials);
                if (T.MinPerScale != 0) scaledSums += d0 * x.S[b + k] + d1 * x.S[b + k + 1];
                acc = Fma.MultiplyAdd(BlockProduct<T>(Magnitudes<T>(w0), w0, xq), Vector256.Create(d0 * xd[b + k]), acc);
                acc1 = Fma.MultiplyAdd(BlockProduct<T>(Magnitudes<T>(w1), w1, xq + 32), Vector256.Create(d1 * xd[b + k + 1]), acc1);
            }
        }
        if (!exactScales && (specials & 0x8000) != 0) return DotAvx2ExactScales<T>(start, blocks, x);
        acc += acc1;
        tail = T.MinPerScale * scaledSums;
        for (; b < blocks; b++, row += T.BlockBytes, xq += 32)
        {
            var w = T.Unpack(row);
            acc = Fma.MultiplyAdd(BlockProduct<T>(Magnitudes<T>(w), w, xq), Vector256.Create(T.Scale(row) * xd[b]), acc);
            if (T.HasMin) tail += T.Min(row) * x.S[b];
        }
        return Sum(acc) + Sum(minAcc) + tail;
    }

    /// <summary>
    /// Q4_0/Q4_1 (16 packed bytes at the end of each block): the packed bytes of two blocks share one register, so one
    /// mask and one shift split 64 nibbles, and the low- and high-nibble byte dots add as int16 before one widening
    /// (each is at most 2·15·127, so the sum cannot saturate). Lanes 0–3 then hold the first block, 4–7 the second.
    /// </summary>
    public static float DotNibblePairsAvx2<T>(byte* row, int blocks, in ActivationRow x) where T : unmanaged, IBlock32Format
    {
        byte* start = row;
        Vector256<float> acc = default, acc1 = default, minAcc = default;
        float scaledSums = 0, tail = 0;
        int specials = 0;
        sbyte* xq = x.Qs;
        float* xd = x.D, xs = x.S;
        int b = 0;
        for (; b + 8 <= blocks; b += 8)
        {
            if (T.MinPerScale == 0) minAcc = Fma.MultiplyAdd(EightMins<T>(row), Vector256.Load(xs + b), minAcc);
            for (int k = 0; k < 8; k += 4, row += 4 * T.BlockBytes, xq += 128)
            {
                byte* row2 = row + 2 * T.BlockBytes;
                float d0 = FiniteHalf(row, ref specials), d1 = FiniteHalf(row + T.BlockBytes, ref specials);
                float d2 = FiniteHalf(row2, ref specials), d3 = FiniteHalf(row2 + T.BlockBytes, ref specials);
                if (T.MinPerScale != 0) scaledSums += d0 * xs[b + k] + d1 * xs[b + k + 1] + d2 * xs[b + k + 2] + d3 * xs[b + k + 3];
                acc = Fma.MultiplyAdd(NibblePairProduct<T>(row, xq), PairScales(d0 * xd[b + k], d1 * xd[b + k + 1]), acc);
                acc1 = Fma.MultiplyAdd(NibblePairProduct<T>(row2, xq + 64), PairScales(d2 * xd[b + k + 2], d3 * xd[b + k + 3]), acc1);
            }
        }
        if ((specials & 0x8000) != 0) return DotAvx2ExactScales<T>(start, blocks, x);
        acc += acc1;
        tail = T.MinPerScale * scaledSums;
        for (; b < blocks; b++, row += T.BlockBytes, xq += 32)
        {
            var w = T.Unpack(row);
            acc = Fma.MultiplyAdd(BlockProduct<T>(Magnitudes<T>(w), w, xq), Vector256.Create(T.Scale(row) * xd[b]), acc);
            tail += T.Min(row) * xs[b];
        }
        return Sum(acc) + Sum(minAcc) + tail;
    }

    /// <summary>
    /// Q4_0 one-token AVX2: as <see cref="DotNibblePairsAvx2{T}"/>, with the eight fp16 scales of a group of blocks
    /// fetched as vectors instead of one scalar at a time: blocks 2j and 2j+1 start 36j bytes into the group, so one
    /// 32-byte load holds the first's scale in its low half and the second's two bytes into its high half, and a byte
    /// shuffle puts them in lane j of each half. The scales then sit in block order 0,2,4,6 | 1,3,5,7, which is the
    /// order a block pair's product lanes (first block low, second high) take them in with one permute.
    /// </summary>
    public static float DotQ4_0Avx2(byte* row, int blocks, in ActivationRow x)
    {
        const int BlockBytes = 18;
        byte* start = row;
        Vector256<float> acc = default, acc1 = default, offsets = default;
        Vector256<uint> magnitudes = default;
        sbyte* xq = x.Qs;
        var interleaved = Vector256.Create(0, 2, 4, 6, 1, 3, 5, 7);
        int b = 0;
        for (; b + 8 <= blocks; b += 8, row += 8 * BlockBytes, xq += 256)
        {
            var halves = Avx2.Shuffle(Vector256.Load(row), ScalePick(0))
                | Avx2.Shuffle(Vector256.Load(row + 2 * BlockBytes), ScalePick(1))
                | Avx2.Shuffle(Vector256.Load(row + 4 * BlockBytes), ScalePick(2))
                | Avx2.Shuffle(Vector256.Load(row + 6 * BlockBytes), ScalePick(3));
            magnitudes = Avx2.Max(magnitudes, halves.AsUInt32() << 17);
            // the half's sign to bit 31 and its magnitude to bits 13..27, then ×2^112 (exact for finite halves)
            var dw = (((halves.AsInt32() << 16) >> 3) & Vector256.Create(unchecked((int)0x8FFFE000))).AsSingle() * Vector256.Create(5.192296858534828e33f);
            var scales = dw * Avx2.PermuteVar8x32(Vector256.Load(x.D + b), interleaved);
            offsets = Fma.MultiplyAdd(dw, Avx2.PermuteVar8x32(Vector256.Load(x.S + b), interleaved), offsets);
            acc = Fma.MultiplyAdd(NibblePairProduct<Q4_0Format>(row, xq), Avx2.PermuteVar8x32(scales, Vector256.Create(0, 0, 0, 0, 4, 4, 4, 4)), acc);
            acc1 = Fma.MultiplyAdd(NibblePairProduct<Q4_0Format>(row + 2 * BlockBytes, xq + 64), Avx2.PermuteVar8x32(scales, Vector256.Create(1, 1, 1, 1, 5, 5, 5, 5)), acc1);
            acc = Fma.MultiplyAdd(NibblePairProduct<Q4_0Format>(row + 4 * BlockBytes, xq + 128), Avx2.PermuteVar8x32(scales, Vector256.Create(2, 2, 2, 2, 6, 6, 6, 6)), acc);
            acc1 = Fma.MultiplyAdd(NibblePairProduct<Q4_0Format>(row + 6 * BlockBytes, xq + 192), Avx2.PermuteVar8x32(scales, Vector256.Create(3, 3, 3, 3, 7, 7, 7, 7)), acc1);
        }
        if (Vector256.GreaterThanOrEqualAny(magnitudes, Vector256.Create(0x7c00u << 17)))
            return DotAvx2ExactScales<Q4_0Format>(start, blocks, x);
        acc += acc1;
        float tail = Q4_0Format.MinPerScale * Sum(offsets);
        for (; b < blocks; b++, row += BlockBytes, xq += 32)
        {
            var w = Q4_0Format.Unpack(row);
            acc = Fma.MultiplyAdd(BlockProduct<Q4_0Format>(w.AsByte(), w, xq), Vector256.Create(Q4_0Format.Scale(row) * x.D[b]), acc);
            tail += Q4_0Format.Min(row) * x.S[b];
        }
        return Sum(acc) + tail;
    }

    /// <summary>Byte shuffle taking bytes 0–1 of the low half to lane j and bytes 2–3 of the high half to lane j + 4 (zeros elsewhere).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<byte> ScalePick(int j)
    {
        var low = Vector128.Create((byte)0x80);
        var high = Vector128.Create((byte)0x80);
        low = low.WithElement(4 * j, (byte)0).WithElement(4 * j + 1, (byte)1);
        high = high.WithElement(4 * j, (byte)2).WithElement(4 * j + 1, (byte)3);
        return Vector256.Create(low, high);
    }

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

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> NibblePairProduct<T>(byte* pair, sbyte* xq) where T : unmanaged, IBlock32Format
    {
        byte* packed0 = pair + T.BlockBytes - 16;
        var packed = Vector256.Create(Vector128.Load(packed0), Vector128.Load(packed0 + T.BlockBytes));
        var mask = Vector256.Create((byte)0x0F);
        var low = packed & mask;
        var high = Avx2.ShiftRightLogical(packed.AsUInt16(), 4).AsByte() & mask;
        var xLow = Vector256.Create(Vector128.Load(xq), Vector128.Load(xq + 32));
        var xHigh = Vector256.Create(Vector128.Load(xq + 16), Vector128.Load(xq + 48));
        Vector256<int> sums;
        if (AvxVnni.IsSupported)
            sums = AvxVnni.MultiplyWideningAndAdd(AvxVnni.MultiplyWideningAndAdd(Vector256<int>.Zero, low, xLow), high, xHigh);
        else
            sums = Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(low, xLow) + Avx2.MultiplyAddAdjacent(high, xHigh), Vector256.Create((short)1));
        return Avx.ConvertToVector256Single(sums);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> PairScales(float first, float second) =>
        Vector256.Create(Vector128.Create(first), Vector128.Create(second));

    /// <summary>Two blocks per 512-bit register (same grouping by eight; the leftovers take the AVX2 step).</summary>
    public static float DotAvx512<T>(byte* row, int blocks, in ActivationRow x) where T : unmanaged, IBlock32Format
    {
        byte* start = row;
        var acc = Vector512<float>.Zero;
        Vector256<float> tailAcc = default, minAcc = default;
        float tail = 0;
        int specials = 0;
        sbyte* xq = x.Qs;
        int b = 0;
        float scaledSums = 0;
        for (; b + 8 <= blocks; b += 8)
        {
            if (T.HasMin && T.MinPerScale == 0) minAcc = Fma.MultiplyAdd(EightMins<T>(row), Vector256.Load(x.S + b), minAcc);
            for (int k = 0; k < 8; k += 2, row += 2 * T.BlockBytes, xq += 64)
            {
                var w = Vector512.Create(T.Unpack(row), T.Unpack(row + T.BlockBytes));
                float d0 = FiniteHalf(row, ref specials), d1 = FiniteHalf(row + T.BlockBytes, ref specials);
                if (T.MinPerScale != 0) scaledSums += d0 * x.S[b + k] + d1 * x.S[b + k + 1];
                var pair = Vector512.Create(Vector256.Create(d0 * x.D[b + k]), Vector256.Create(d1 * x.D[b + k + 1]));
                acc = Avx512F.FusedMultiplyAdd(PairProduct<T>(w, Vector512.Load(xq)), pair, acc);
            }
        }
        if ((specials & 0x8000) != 0) return DotAvx2ExactScales<T>(start, blocks, x);
        tail = T.MinPerScale * scaledSums;
        for (; b < blocks; b++, row += T.BlockBytes, xq += 32)
        {
            var w = T.Unpack(row);
            tailAcc = Fma.MultiplyAdd(BlockProduct<T>(Magnitudes<T>(w), w, xq), Vector256.Create(T.Scale(row) * x.D[b]), tailAcc);
            if (T.HasMin) tail += T.Min(row) * x.S[b];
        }
        return Vector512.Sum(acc) + Sum(tailAcc) + Sum(minAcc) + tail;
    }

    /// <summary>Integer dots of two blocks at once (sixteen int32 sums as floats). AVX-512 has no vpsignb, so w's sign moves onto x with a select (x is never −128).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> PairProduct<T>(Vector512<sbyte> w, Vector512<sbyte> xv) where T : unmanaged, IBlock32Format
    {
        Vector512<short> pairs = T.HasMin
            ? Avx512BW.MultiplyAddAdjacent(w.AsByte(), xv)
            : Avx512BW.MultiplyAddAdjacent(Avx512BW.Abs(w), Vector512.ConditionalSelect(Vector512.LessThan(w, Vector512<sbyte>.Zero), -xv, xv));
        return Avx512F.ConvertToVector512Single(Avx512BW.MultiplyAddAdjacent(pairs, Vector512.Create((short)1)));
    }

    // ---- four tokens per pass: each weight block is unpacked once and dotted with four activation rows ----

    public static void Dot4Avx2<T>(byte* row, int blocks, ActivationRow* x, float* result) where T : unmanaged, IBlock32Format
    {
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
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
            if (T.HasMin)
            {
                var mins = EightMins<T>(row, weightScales);
                m0 = Fma.MultiplyAdd(mins, Vector256.Load(x[0].S + b), m0);
                m1 = Fma.MultiplyAdd(mins, Vector256.Load(x[1].S + b), m1);
                m2 = Fma.MultiplyAdd(mins, Vector256.Load(x[2].S + b), m2);
                m3 = Fma.MultiplyAdd(mins, Vector256.Load(x[3].S + b), m3);
            }
            for (int k = 0; k < 8; k++, row += T.BlockBytes)
            {
                var w = T.Unpack(row);
                var magnitudes = Magnitudes<T>(w);
                int o = 32 * (b + k);
                a0 = Fma.MultiplyAdd(BlockProduct<T>(magnitudes, w, q0 + o), Lane(s0, k), a0);
                a1 = Fma.MultiplyAdd(BlockProduct<T>(magnitudes, w, q1 + o), Lane(s1, k), a1);
                a2 = Fma.MultiplyAdd(BlockProduct<T>(magnitudes, w, q2 + o), Lane(s2, k), a2);
                a3 = Fma.MultiplyAdd(BlockProduct<T>(magnitudes, w, q3 + o), Lane(s3, k), a3);
            }
        }
        float t0 = 0, t1 = 0, t2 = 0, t3 = 0;
        for (; b < blocks; b++, row += T.BlockBytes)
        {
            var w = T.Unpack(row);
            var magnitudes = Magnitudes<T>(w);
            float dw = T.Scale(row);
            int o = 32 * b;
            a0 = Fma.MultiplyAdd(BlockProduct<T>(magnitudes, w, q0 + o), Vector256.Create(dw * x[0].D[b]), a0);
            a1 = Fma.MultiplyAdd(BlockProduct<T>(magnitudes, w, q1 + o), Vector256.Create(dw * x[1].D[b]), a1);
            a2 = Fma.MultiplyAdd(BlockProduct<T>(magnitudes, w, q2 + o), Vector256.Create(dw * x[2].D[b]), a2);
            a3 = Fma.MultiplyAdd(BlockProduct<T>(magnitudes, w, q3 + o), Vector256.Create(dw * x[3].D[b]), a3);
            if (T.HasMin)
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

    public static void Dot4Avx512<T>(byte* row, int blocks, ActivationRow* x, float* result) where T : unmanaged, IBlock32Format
    {
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
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
            if (T.HasMin)
            {
                var mins = EightMins<T>(row, weightScales);
                m0 = Fma.MultiplyAdd(mins, Vector256.Load(x[0].S + b), m0);
                m1 = Fma.MultiplyAdd(mins, Vector256.Load(x[1].S + b), m1);
                m2 = Fma.MultiplyAdd(mins, Vector256.Load(x[2].S + b), m2);
                m3 = Fma.MultiplyAdd(mins, Vector256.Load(x[3].S + b), m3);
            }
            for (int k = 0; k < 8; k += 2, row += 2 * T.BlockBytes)
            {
                var w = Vector512.Create(T.Unpack(row), T.Unpack(row + T.BlockBytes));
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
            var w = T.Unpack(row);
            var magnitudes = Magnitudes<T>(w);
            float dw = T.Scale(row);
            int o = 32 * b;
            r0 = Fma.MultiplyAdd(BlockProduct<T>(magnitudes, w, q0 + o), Vector256.Create(dw * x[0].D[b]), r0);
            r1 = Fma.MultiplyAdd(BlockProduct<T>(magnitudes, w, q1 + o), Vector256.Create(dw * x[1].D[b]), r1);
            r2 = Fma.MultiplyAdd(BlockProduct<T>(magnitudes, w, q2 + o), Vector256.Create(dw * x[2].D[b]), r2);
            r3 = Fma.MultiplyAdd(BlockProduct<T>(magnitudes, w, q3 + o), Vector256.Create(dw * x[3].D[b]), r3);
            if (T.HasMin)
            {
                float mw = T.Min(row);
                t0 += mw * x[0].S[b];
                t1 += mw * x[1].S[b];
                t2 += mw * x[2].S[b];
                t3 += mw * x[3].S[b];
            }
        }
        result[0] = Vector512.Sum(a0) + Sum(r0) + Sum(m0) + t0;
        result[1] = Vector512.Sum(a1) + Sum(r1) + Sum(m1) + t1;
        result[2] = Vector512.Sum(a2) + Sum(r2) + Sum(m2) + t2;
        result[3] = Vector512.Sum(a3) + Sum(r3) + Sum(m3) + t3;
    }
}
