using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Loom.Core.Quantization;
using static Loom.Core.Kernels.SimdHelpers;

namespace Loom.Core.Kernels;

/// <summary>Float dots for F32, F16 and BF16 weights against float activations (FMA accumulation).</summary>
internal static unsafe class FloatKernels
{
    private const int PortableChunk = 256;

    public static float DotF32Portable(byte* row, int cols, in ActivationRow x) =>
        TensorPrimitives.Dot(new ReadOnlySpan<float>(row, cols), new ReadOnlySpan<float>(x.X, cols));

    public static float DotF16Portable(byte* row, int cols, in ActivationRow x)
    {
        Span<float> w = stackalloc float[PortableChunk];
        var halves = (Half*)row;
        float sum = 0;
        for (int c = 0; c < cols; c += PortableChunk)
        {
            int n = Math.Min(PortableChunk, cols - c);
            TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(halves + c, n), w);
            sum += TensorPrimitives.Dot(w[..n], new ReadOnlySpan<float>(x.X + c, n));
        }
        return sum;
    }

    public static float DotBF16Portable(byte* row, int cols, in ActivationRow x)
    {
        var bits = (ushort*)row;
        float sum = 0;
        for (int c = 0; c < cols; c++) sum += Fp.BFloat16ToFloat(bits[c]) * x.X[c];
        return sum;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<uint> Widen(ushort* p) => Avx2.ConvertToVector256Int32(p).AsUInt32();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<uint> Widen512(ushort* p) => Avx512F.ConvertToVector512UInt32(Vector256.Load(p));

    public static float DotF32Avx2(byte* row, int cols, in ActivationRow x)
    {
        var w = (float*)row;
        float* xs = x.X;
        Vector256<float> a0 = default, a1 = default;
        int c = 0;
        for (; c + 16 <= cols; c += 16)
        {
            a0 = Fma.MultiplyAdd(Vector256.Load(w + c), Vector256.Load(xs + c), a0);
            a1 = Fma.MultiplyAdd(Vector256.Load(w + c + 8), Vector256.Load(xs + c + 8), a1);
        }
        for (; c + 8 <= cols; c += 8) a0 = Fma.MultiplyAdd(Vector256.Load(w + c), Vector256.Load(xs + c), a0);
        float sum = Vector256.Sum(a0 + a1);
        for (; c < cols; c++) sum += w[c] * xs[c];
        return sum;
    }

    // F16 rows convert with three integer operations and one multiply per vector: the sign-extended half shifted left
    // by 13 and masked keeps its sign in bit 31 and its magnitude where a float's exponent and mantissa sit (the "raw"
    // half, w·2^-112), and scaling by 2^112 rebases the exponent (subnormal halves land on the right normal floats).
    // That is exact except for Inf/NaN, which would come out as 2^16-range numbers: an unsigned running maximum of the
    // magnitudes spots those rows and they are redone with the fully general conversion.
    //
    // A subnormal half's raw bits are a denormal float, and on Intel a denormal entering a multiply or FMA takes a
    // microcode assist: on a Xeon (family 6 model 207) an FMA loop over raw halves ran three times slower with 0.2% of
    // them subnormal (random weights of ±0.025 hold 0.17–0.28%), which held F16 prefill to a third of llama.cpp's speed.
    // There the raw half also gets 96 added to its exponent (an OR: bits 28–29 are clear), so it is w·2^-16 and never
    // denormal; a subnormal half then reads as sign·2^-31·(1 + m/2^10) and is corrected exactly to 2·raw − sign·2^-30.
    // (−0 comes out as +0, which changes no result: every sum here starts at +0, and a round-to-nearest sum that starts
    // at +0 never becomes −0, so adding a zero product of either sign leaves it as it is.)
    // Every product w_raw·(x·scale) is the same exact w·x either way, so the kernels' results keep their bits.

    /// <summary>Whether raw halves are rebased by 2^96 so that subnormal halves never become denormal floats (Intel).</summary>
    internal static readonly bool RawHalvesAvoidDenormals = KernelIsaSupport.IntelCpu;

    /// <summary>2^112, or 2^16 where <see cref="RawHalvesAvoidDenormals"/>: the raw half times this is the half's value.</summary>
    private static readonly float HalfRebase = RawHalvesAvoidDenormals ? 65536f : 5.192296858534828e33f;

    private const int RawHalfBits = unchecked((int)0x8FFFE000);  // sign, exponent and mantissa after the shift by 13
    private const int RawHalfExponent = 0x0F800000;               // a half's exponent after the shift by 13
    private const int RawExponentRebase = 0x30000000;             // 96 added to the float exponent
    private const int SubnormalOffsetTwice = 0x30800000;          // 2^-30: twice the implicit one a rebased subnormal gains
    private const uint HalfInfOrNanShifted = 0x7c00u << 17;  // magnitude bits moved to the top of a 32-bit lane

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> WidenSigned(ushort* p) => Avx2.ConvertToVector256Int32((short*)p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> FiniteHalfToSingle(Vector256<int> signExtended) => RawHalves(signExtended) * Vector256.Create(HalfRebase);

    /// <summary>
    /// Sign-extended halves shifted into a float's place: exactly w / <see cref="HalfRebase"/> for finite halves
    /// (subnormal ones included).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> RawHalves(Vector256<int> signExtended) =>
        RawHalvesAvoidDenormals ? RebasedHalves(signExtended) : ShiftedHalves(signExtended);

    /// <summary>Finite halves as w·2^-112 (subnormal halves as denormal floats).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<float> ShiftedHalves(Vector256<int> signExtended) =>
        ((signExtended << 13) & Vector256.Create(RawHalfBits)).AsSingle();

    /// <summary>Finite halves as w·2^-16, never denormal.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<float> RebasedHalves(Vector256<int> signExtended)
    {
        var shifted = signExtended << 13;
        var raw = ((shifted & Vector256.Create(RawHalfBits)) | Vector256.Create(RawExponentRebase)).AsSingle();
        var offset = (raw.AsInt32() & Vector256.Create(int.MinValue)) | Vector256.Create(SubnormalOffsetTwice);
        var subnormal = Vector256.Equals(shifted & Vector256.Create(RawHalfExponent), Vector256<int>.Zero).AsSingle();
        return Vector256.ConditionalSelect(subnormal, Fma.MultiplySubtract(raw, Vector256.Create(2f), offset.AsSingle()), raw);
    }

    /// <summary>Eight finite halves shifted into a float's place: exactly w / <see cref="F16InputScale"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<float> RawHalvesAvx2(ushort* p) => RawHalves(WidenSigned(p));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<uint> TrackMagnitude(Vector256<int> signExtended, Vector256<uint> max) =>
        Avx2.Max(max, (signExtended << 17).AsUInt32());

    public static float DotF16Avx2(byte* row, int cols, in ActivationRow x)
    {
        var w = (ushort*)row;
        float* xs = x.X;
        Vector256<float> a0 = default, a1 = default;
        Vector256<uint> magnitudes = default;
        int c = 0;
        for (; c + 16 <= cols; c += 16)
        {
            var h0 = WidenSigned(w + c);
            var h1 = WidenSigned(w + c + 8);
            magnitudes = TrackMagnitude(h1, TrackMagnitude(h0, magnitudes));
            a0 = Fma.MultiplyAdd(FiniteHalfToSingle(h0), Vector256.Load(xs + c), a0);
            a1 = Fma.MultiplyAdd(FiniteHalfToSingle(h1), Vector256.Load(xs + c + 8), a1);
        }
        for (; c + 8 <= cols; c += 8)
        {
            var h = WidenSigned(w + c);
            magnitudes = TrackMagnitude(h, magnitudes);
            a0 = Fma.MultiplyAdd(FiniteHalfToSingle(h), Vector256.Load(xs + c), a0);
        }
        if (Vector256.GreaterThanOrEqualAny(magnitudes, Vector256.Create(HalfInfOrNanShifted)))
            return DotF16WithSpecialsAvx2(w, cols, xs);
        float sum = Vector256.Sum(a0 + a1);
        for (; c < cols; c++) sum += Fp.HalfToFloat(w[c]) * xs[c];
        return sum;
    }

    // Decode on F16 matrices known to hold no Inf/NaN (checked once, see WeightMatrix.CreateOptimized): the input comes
    // scaled by HalfRebase (2^112, or 2^16 on Intel; exact while |x| < 2^15, which the caller checks), so the rebasing
    // multiply moves out of the loop. A raw half is exactly w / HalfRebase (subnormal halves included), hence
    // w_raw·(x·HalfRebase) is exactly the product w·x and every FMA rounds as in DotF16Avx2/Avx512: the same bits, one
    // multiply fewer per vector and no magnitude tracking.

    /// <summary>The scale an input gets for <see cref="DotF16ScaledAvx2"/> and <see cref="DotF16ScaledAvx512"/>.</summary>
    public static float F16InputScale => HalfRebase;

    /// <summary>Inputs below this magnitude stay finite once scaled by <see cref="F16InputScale"/>.</summary>
    public const float F16ScaledInputLimit = 32768f;

    private static readonly float HalfUnscale = 1f / HalfRebase;


    /// <summary>
    /// Converts halves that hold no Inf or NaN to floats, exactly: the conversion the F16 dots apply, stored (used for
    /// an F16 KV cache, read a block at a time).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void FiniteHalvesToSingles(ushort* halves, float* destination, int count)
    {
        int i = 0;
        if (Avx512F.IsSupported)
            for (; i + 16 <= count; i += 16) FiniteHalfToSingle(WidenSigned512(halves + i)).Store(destination + i);
        if (Avx2.IsSupported)
            for (; i + 8 <= count; i += 8) FiniteHalfToSingle(WidenSigned(halves + i)).Store(destination + i);
        for (; i < count; i++) destination[i] = Fp.HalfToFloat(halves[i]);
    }

    /// <summary>Whether none of the halves is Inf or NaN (all exponent bits set).</summary>
    public static bool HalvesFinite(ushort* halves, long count)
    {
        long i = 0;
        var exponent = Vector256.Create((ushort)0x7C00);
        for (; i + 16 <= count; i += 16)
            if (Vector256.EqualsAny(Vector256.Load(halves + i) & exponent, exponent)) return false;
        for (; i < count; i++)
            if ((halves[i] & 0x7C00) == 0x7C00) return false;
        return true;
    }

    /// <summary>
    /// How far ahead of the cache line in hand <see cref="DotF16ScaledAvx2"/> asks for the rows into L2. On Zen 3 the
    /// hardware prefetcher alone left one row at a time at 57–65% of the read rate; with this request, 896- and
    /// 2048-column rows stream 16–29% faster (one and two threads). On Zen 4 a fetch made the 512-bit kernel slower
    /// (24.8 → 17.6 GB/s, one thread), so that kernel has none (Intel's fetch is in the four-row kernel, see
    /// <see cref="FetchAhead512"/>); nor has the 256-bit four-row kernel, where it gained nothing.
    /// </summary>
    private const int F16PrefetchDistance = 1024;

    /// <summary>
    /// Whether <see cref="FourRowsScaledAvx512"/> fetches its rows <see cref="F16FourRowsPrefetchDistance512"/> ahead
    /// into L2, and one token takes it at every width (<see cref="DotRowsMinColumns512"/>): on Intel only. Intel Xeon
    /// (family 6 model 207), decode at two threads, in-process A/B: the one-row kernel fetching 3 KiB ahead first gained
    /// 20% (Llama-3.2-1B), 33% (Qwen2.5-0.5B) and about 35% (SmolLM2-135M) over no fetch (512 bytes least, 3–8 KiB alike,
    /// the prefetch hint T0/T1/T2 alike, non-temporal −5–7%); four rows at every width, each fetching 32 KiB ahead,
    /// gained another 9%, 10% and 7% over that (16 KiB +5–12%, 64 KiB +5–9%, 256 KiB −13% to +4%; four rows fetching
    /// 3 KiB ahead −17% on Qwen2.5-0.5B). The one-row kernel now serves only rows a multiple of four leaves over, and
    /// its fetch made no difference there any more (−1% to +2%), so it has none.
    /// </summary>
    private static readonly bool FetchAhead512 = KernelIsaSupport.IntelCpu;

    /// <summary>How far ahead each of <see cref="FourRowsScaledAvx512"/>'s rows is fetched: so far that the four streams ask for rows the kernel reaches a few groups later.</summary>
    private const int F16FourRowsPrefetchDistance512 = 32768;

    public static float DotF16ScaledAvx2(byte* row, int cols, in ActivationRow x)
    {
        var w = (ushort*)row;
        float* xs = x.X;
        Vector256<float> a0 = default, a1 = default;
        int c = 0;
        for (; c + 32 <= cols; c += 32)
        {
            Sse.Prefetch1((byte*)(w + c) + F16PrefetchDistance);
            a0 = Fma.MultiplyAdd(RawHalves(WidenSigned(w + c)), Vector256.Load(xs + c), a0);
            a1 = Fma.MultiplyAdd(RawHalves(WidenSigned(w + c + 8)), Vector256.Load(xs + c + 8), a1);
            a0 = Fma.MultiplyAdd(RawHalves(WidenSigned(w + c + 16)), Vector256.Load(xs + c + 16), a0);
            a1 = Fma.MultiplyAdd(RawHalves(WidenSigned(w + c + 24)), Vector256.Load(xs + c + 24), a1);
        }
        for (; c + 16 <= cols; c += 16)
        {
            a0 = Fma.MultiplyAdd(RawHalves(WidenSigned(w + c)), Vector256.Load(xs + c), a0);
            a1 = Fma.MultiplyAdd(RawHalves(WidenSigned(w + c + 8)), Vector256.Load(xs + c + 8), a1);
        }
        for (; c + 8 <= cols; c += 8) a0 = Fma.MultiplyAdd(RawHalves(WidenSigned(w + c)), Vector256.Load(xs + c), a0);
        return ScaledTail(Vector256.Sum(a0 + a1), w, c, cols, xs);
    }

    public static float DotF16ScaledAvx512(byte* row, int cols, in ActivationRow x)
    {
        var w = (ushort*)row;
        float* xs = x.X;
        Vector512<float> a0 = default, a1 = default;
        int c = 0;
        for (; c + 32 <= cols; c += 32)
        {
            a0 = Avx512F.FusedMultiplyAdd(RawHalves(WidenSigned512(w + c)), Vector512.Load(xs + c), a0);
            a1 = Avx512F.FusedMultiplyAdd(RawHalves(WidenSigned512(w + c + 16)), Vector512.Load(xs + c + 16), a1);
        }
        for (; c + 16 <= cols; c += 16) a0 = Avx512F.FusedMultiplyAdd(RawHalves(WidenSigned512(w + c)), Vector512.Load(xs + c), a0);
        return ScaledTail(Vector512.Sum(a0 + a1), w, c, cols, xs);
    }

    /// <summary>The columns from <paramref name="c"/> on, one at a time, added to a scaled F16 row's vector sum.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float ScaledTail(float sum, ushort* w, int c, int cols, float* xs)
    {
        for (; c < cols; c++) sum += Fp.HalfToFloat(w[c]) * (xs[c] * HalfUnscale);
        return sum;
    }

    /// <summary>
    /// Columns from which one token takes <see cref="DotRowsF16ScaledAvx2"/> or <see cref="DotRowsF16ScaledAvx512"/>:
    /// the F32 input (16 KiB here) fills half the 32 KiB L1 cache, so the streaming rows evict it and one row at a time
    /// re-read it from L2 for every row (in a microbenchmark on Zen 4, two threads, 512 MiB of rows: 17 GB/s at 8192
    /// columns against 28 GB/s at 2048). Below, four rows at a time measured slower (20 against 28 GB/s at 2048): four
    /// streams of one page each leave the hardware prefetcher less to follow.
    /// </summary>
    public const int DotRowsMinColumns = 4096;

    /// <summary>
    /// <see cref="DotRowsMinColumns"/> for the 512-bit kernels: on Intel, where the four rows fetch far ahead
    /// (<see cref="F16FourRowsPrefetchDistance512"/>), rows of every width go four at a time.
    /// </summary>
    public static int DotRowsMinColumns512 { get; } = FetchAhead512 ? 0 : DotRowsMinColumns;

    /// <summary>
    /// One token against <paramref name="rows"/> consecutive finite F16 rows (input pre-scaled), four rows at a time so
    /// each input load serves four rows (25 against 17 GB/s at 8192 columns in the microbenchmark above). Each row's FMAs
    /// run in the same order into the same two accumulators as <see cref="DotF16ScaledAvx2"/>: the same bits.
    /// </summary>
    public static void DotRowsF16ScaledAvx2(byte* first, long rowBytes, int rows, int cols, in ActivationRow x, float* results)
    {
        int r = 0;
        for (; r + 4 <= rows; r += 4) FourRowsScaledAvx2(first + r * rowBytes, rowBytes, cols, x.X, results + r);
        for (; r < rows; r++) results[r] = DotF16ScaledAvx2(first + r * rowBytes, cols, x);
    }

    /// <summary>The 512-bit <see cref="DotRowsF16ScaledAvx2"/>: the same bits as <see cref="DotF16ScaledAvx512"/>.</summary>
    public static void DotRowsF16ScaledAvx512(byte* first, long rowBytes, int rows, int cols, in ActivationRow x, float* results)
    {
        int r = 0;
        for (; r + 4 <= rows; r += 4) FourRowsScaledAvx512(first + r * rowBytes, rowBytes, cols, x.X, results + r);
        for (; r < rows; r++) results[r] = DotF16ScaledAvx512(first + r * rowBytes, cols, x);
    }

    private static void FourRowsScaledAvx2(byte* first, long rowBytes, int cols, float* xs, float* results)
    {
        ushort* w0 = (ushort*)first, w1 = (ushort*)(first + rowBytes), w2 = (ushort*)(first + 2 * rowBytes), w3 = (ushort*)(first + 3 * rowBytes);
        Vector256<float> a0 = default, a1 = default, b0 = default, b1 = default, c0 = default, c1 = default, d0 = default, d1 = default;
        int c = 0;
        for (; c + 16 <= cols; c += 16)
        {
            var x0 = Vector256.Load(xs + c);
            var x1 = Vector256.Load(xs + c + 8);
            a0 = Fma.MultiplyAdd(RawHalves(WidenSigned(w0 + c)), x0, a0);
            a1 = Fma.MultiplyAdd(RawHalves(WidenSigned(w0 + c + 8)), x1, a1);
            b0 = Fma.MultiplyAdd(RawHalves(WidenSigned(w1 + c)), x0, b0);
            b1 = Fma.MultiplyAdd(RawHalves(WidenSigned(w1 + c + 8)), x1, b1);
            c0 = Fma.MultiplyAdd(RawHalves(WidenSigned(w2 + c)), x0, c0);
            c1 = Fma.MultiplyAdd(RawHalves(WidenSigned(w2 + c + 8)), x1, c1);
            d0 = Fma.MultiplyAdd(RawHalves(WidenSigned(w3 + c)), x0, d0);
            d1 = Fma.MultiplyAdd(RawHalves(WidenSigned(w3 + c + 8)), x1, d1);
        }
        if (c + 8 <= cols)
        {
            var x0 = Vector256.Load(xs + c);
            a0 = Fma.MultiplyAdd(RawHalves(WidenSigned(w0 + c)), x0, a0);
            b0 = Fma.MultiplyAdd(RawHalves(WidenSigned(w1 + c)), x0, b0);
            c0 = Fma.MultiplyAdd(RawHalves(WidenSigned(w2 + c)), x0, c0);
            d0 = Fma.MultiplyAdd(RawHalves(WidenSigned(w3 + c)), x0, d0);
            c += 8;
        }
        results[0] = ScaledTail(Vector256.Sum(a0 + a1), w0, c, cols, xs);
        results[1] = ScaledTail(Vector256.Sum(b0 + b1), w1, c, cols, xs);
        results[2] = ScaledTail(Vector256.Sum(c0 + c1), w2, c, cols, xs);
        results[3] = ScaledTail(Vector256.Sum(d0 + d1), w3, c, cols, xs);
    }

    private static void FourRowsScaledAvx512(byte* first, long rowBytes, int cols, float* xs, float* results)
    {
        ushort* w0 = (ushort*)first, w1 = (ushort*)(first + rowBytes), w2 = (ushort*)(first + 2 * rowBytes), w3 = (ushort*)(first + 3 * rowBytes);
        Vector512<float> a0 = default, a1 = default, b0 = default, b1 = default, c0 = default, c1 = default, d0 = default, d1 = default;
        int c = 0;
        for (; c + 32 <= cols; c += 32)
        {
            if (FetchAhead512)
            {
                const int ahead = F16FourRowsPrefetchDistance512;
                Sse.Prefetch1((byte*)(w0 + c) + ahead); Sse.Prefetch1((byte*)(w1 + c) + ahead);
                Sse.Prefetch1((byte*)(w2 + c) + ahead); Sse.Prefetch1((byte*)(w3 + c) + ahead);
            }
            var x0 = Vector512.Load(xs + c);
            var x1 = Vector512.Load(xs + c + 16);
            a0 = Avx512F.FusedMultiplyAdd(RawHalves(WidenSigned512(w0 + c)), x0, a0);
            a1 = Avx512F.FusedMultiplyAdd(RawHalves(WidenSigned512(w0 + c + 16)), x1, a1);
            b0 = Avx512F.FusedMultiplyAdd(RawHalves(WidenSigned512(w1 + c)), x0, b0);
            b1 = Avx512F.FusedMultiplyAdd(RawHalves(WidenSigned512(w1 + c + 16)), x1, b1);
            c0 = Avx512F.FusedMultiplyAdd(RawHalves(WidenSigned512(w2 + c)), x0, c0);
            c1 = Avx512F.FusedMultiplyAdd(RawHalves(WidenSigned512(w2 + c + 16)), x1, c1);
            d0 = Avx512F.FusedMultiplyAdd(RawHalves(WidenSigned512(w3 + c)), x0, d0);
            d1 = Avx512F.FusedMultiplyAdd(RawHalves(WidenSigned512(w3 + c + 16)), x1, d1);
        }
        if (c + 16 <= cols)
        {
            var x0 = Vector512.Load(xs + c);
            a0 = Avx512F.FusedMultiplyAdd(RawHalves(WidenSigned512(w0 + c)), x0, a0);
            b0 = Avx512F.FusedMultiplyAdd(RawHalves(WidenSigned512(w1 + c)), x0, b0);
            c0 = Avx512F.FusedMultiplyAdd(RawHalves(WidenSigned512(w2 + c)), x0, c0);
            d0 = Avx512F.FusedMultiplyAdd(RawHalves(WidenSigned512(w3 + c)), x0, d0);
            c += 16;
        }
        results[0] = ScaledTail(Vector512.Sum(a0 + a1), w0, c, cols, xs);
        results[1] = ScaledTail(Vector512.Sum(b0 + b1), w1, c, cols, xs);
        results[2] = ScaledTail(Vector512.Sum(c0 + c1), w2, c, cols, xs);
        results[3] = ScaledTail(Vector512.Sum(d0 + d1), w3, c, cols, xs);
    }

    /// <summary>Rows holding Inf or NaN: the general conversion, so they propagate exactly as in ggml.</summary>
    private static float DotF16WithSpecialsAvx2(ushort* w, int cols, float* xs)
    {
        Vector256<float> acc = default;
        int c = 0;
        for (; c + 8 <= cols; c += 8) acc = Fma.MultiplyAdd(HalfToSingle(Widen(w + c)), Vector256.Load(xs + c), acc);
        float sum = Vector256.Sum(acc);
        for (; c < cols; c++) sum += Fp.HalfToFloat(w[c]) * xs[c];
        return sum;
    }

    public static float DotBF16Avx2(byte* row, int cols, in ActivationRow x)
    {
        var w = (ushort*)row;
        float* xs = x.X;
        Vector256<float> a0 = default, a1 = default;
        int c = 0;
        for (; c + 16 <= cols; c += 16)
        {
            a0 = Fma.MultiplyAdd((Widen(w + c) << 16).AsSingle(), Vector256.Load(xs + c), a0);
            a1 = Fma.MultiplyAdd((Widen(w + c + 8) << 16).AsSingle(), Vector256.Load(xs + c + 8), a1);
        }
        for (; c + 8 <= cols; c += 8) a0 = Fma.MultiplyAdd((Widen(w + c) << 16).AsSingle(), Vector256.Load(xs + c), a0);
        float sum = Vector256.Sum(a0 + a1);
        for (; c < cols; c++) sum += Fp.BFloat16ToFloat(w[c]) * xs[c];
        return sum;
    }

    public static float DotF32Avx512(byte* row, int cols, in ActivationRow x)
    {
        var w = (float*)row;
        float* xs = x.X;
        Vector512<float> a0 = default, a1 = default;
        int c = 0;
        for (; c + 32 <= cols; c += 32)
        {
            a0 = Avx512F.FusedMultiplyAdd(Vector512.Load(w + c), Vector512.Load(xs + c), a0);
            a1 = Avx512F.FusedMultiplyAdd(Vector512.Load(w + c + 16), Vector512.Load(xs + c + 16), a1);
        }
        for (; c + 16 <= cols; c += 16) a0 = Avx512F.FusedMultiplyAdd(Vector512.Load(w + c), Vector512.Load(xs + c), a0);
        float sum = Vector512.Sum(a0 + a1);
        for (; c < cols; c++) sum += w[c] * xs[c];
        return sum;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<int> WidenSigned512(ushort* p) => Avx512F.ConvertToVector512Int32(Vector256.Load((short*)p));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> FiniteHalfToSingle(Vector512<int> signExtended) => RawHalves(signExtended) * Vector512.Create(HalfRebase);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> RawHalves(Vector512<int> signExtended) =>
        RawHalvesAvoidDenormals ? RebasedHalves(signExtended) : ShiftedHalves(signExtended);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> ShiftedHalves(Vector512<int> signExtended) =>
        ((signExtended << 13) & Vector512.Create(RawHalfBits)).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> RebasedHalves(Vector512<int> signExtended)
    {
        var shifted = signExtended << 13;
        var raw = ((shifted & Vector512.Create(RawHalfBits)) | Vector512.Create(RawExponentRebase)).AsSingle();
        var offset = (raw.AsInt32() & Vector512.Create(int.MinValue)) | Vector512.Create(SubnormalOffsetTwice);
        var subnormal = Vector512.Equals(shifted & Vector512.Create(RawHalfExponent), Vector512<int>.Zero).AsSingle();
        return Vector512.ConditionalSelect(subnormal, Avx512F.FusedMultiplySubtract(raw, Vector512.Create(2f), offset.AsSingle()), raw);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<uint> TrackMagnitude(Vector512<int> signExtended, Vector512<uint> max) =>
        Avx512F.Max(max, (signExtended << 17).AsUInt32());

    public static float DotF16Avx512(byte* row, int cols, in ActivationRow x)
    {
        var w = (ushort*)row;
        float* xs = x.X;
        Vector512<float> a0 = default, a1 = default;
        Vector512<uint> magnitudes = default;
        int c = 0;
        for (; c + 32 <= cols; c += 32)
        {
            var h0 = WidenSigned512(w + c);
            var h1 = WidenSigned512(w + c + 16);
            magnitudes = TrackMagnitude(h1, TrackMagnitude(h0, magnitudes));
            a0 = Avx512F.FusedMultiplyAdd(FiniteHalfToSingle(h0), Vector512.Load(xs + c), a0);
            a1 = Avx512F.FusedMultiplyAdd(FiniteHalfToSingle(h1), Vector512.Load(xs + c + 16), a1);
        }
        for (; c + 16 <= cols; c += 16)
        {
            var h = WidenSigned512(w + c);
            magnitudes = TrackMagnitude(h, magnitudes);
            a0 = Avx512F.FusedMultiplyAdd(FiniteHalfToSingle(h), Vector512.Load(xs + c), a0);
        }
        if (Vector512.GreaterThanOrEqualAny(magnitudes, Vector512.Create(HalfInfOrNanShifted)))
            return DotF16WithSpecialsAvx2(w, cols, xs);
        float sum = Vector512.Sum(a0 + a1);
        for (; c < cols; c++) sum += Fp.HalfToFloat(w[c]) * xs[c];
        return sum;
    }

    public static float DotBF16Avx512(byte* row, int cols, in ActivationRow x)
    {
        var w = (ushort*)row;
        float* xs = x.X;
        Vector512<float> a0 = default, a1 = default;
        int c = 0;
        for (; c + 32 <= cols; c += 32)
        {
            a0 = Avx512F.FusedMultiplyAdd((Widen512(w + c) << 16).AsSingle(), Vector512.Load(xs + c), a0);
            a1 = Avx512F.FusedMultiplyAdd((Widen512(w + c + 16) << 16).AsSingle(), Vector512.Load(xs + c + 16), a1);
        }
        for (; c + 16 <= cols; c += 16) a0 = Avx512F.FusedMultiplyAdd((Widen512(w + c) << 16).AsSingle(), Vector512.Load(xs + c), a0);
        float sum = Vector512.Sum(a0 + a1);
        for (; c < cols; c++) sum += Fp.BFloat16ToFloat(w[c]) * xs[c];
        return sum;
    }

    // ---- four tokens per pass: each weight vector is converted once and used for four FMAs ----

    public static void Dot4F32Avx2(byte* row, int cols, ActivationRow* x, float* result) => Dot4Avx2(row, cols, x, result, 0);

    public static void Dot4F16Avx2(byte* row, int cols, ActivationRow* x, float* result) => Dot4Avx2(row, cols, x, result, 1);

    public static void Dot4BF16Avx2(byte* row, int cols, ActivationRow* x, float* result) => Dot4Avx2(row, cols, x, result, 2);

    /// <summary><paramref name="format"/>: 0 = F32, 1 = F16, 2 = BF16 (a constant at every call site, so the JIT folds it).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Dot4Avx2(byte* row, int cols, ActivationRow* x, float* result, int format) =>
        Dot4Avx2(row, cols, x, result, format, null, 0);

    /// <summary>As the four-token kernel, resuming at column <paramref name="from"/> with the accumulators in <paramref name="saved"/> when given.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Dot4Avx2(byte* row, int cols, ActivationRow* x, float* result, int format, Vector256<float>* saved, int from)
    {
        // Two sets of four accumulators (even and odd 8-column steps): eight independent FMA chains cover the FMA
        // latency, where four chains measured FMA-latency-bound.
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        Vector256<float> b0 = default, b1 = default, b2 = default, b3 = default;
        if (saved != null)
        {
            a0 = saved[0]; a1 = saved[1]; a2 = saved[2]; a3 = saved[3];
            b0 = saved[4]; b1 = saved[5]; b2 = saved[6]; b3 = saved[7];
        }
        float* x0 = x[0].X, x1 = x[1].X, x2 = x[2].X, x3 = x[3].X;
        Vector256<uint> magnitudes = default;
        int c = from;
        for (; c + 16 <= cols; c += 16)
        {
            var w = Weights8(row, c, format, ref magnitudes);
            var v = Weights8(row, c + 8, format, ref magnitudes);
            a0 = Fma.MultiplyAdd(w, Vector256.Load(x0 + c), a0);
            a1 = Fma.MultiplyAdd(w, Vector256.Load(x1 + c), a1);
            a2 = Fma.MultiplyAdd(w, Vector256.Load(x2 + c), a2);
            a3 = Fma.MultiplyAdd(w, Vector256.Load(x3 + c), a3);
            b0 = Fma.MultiplyAdd(v, Vector256.Load(x0 + c + 8), b0);
            b1 = Fma.MultiplyAdd(v, Vector256.Load(x1 + c + 8), b1);
            b2 = Fma.MultiplyAdd(v, Vector256.Load(x2 + c + 8), b2);
            b3 = Fma.MultiplyAdd(v, Vector256.Load(x3 + c + 8), b3);
        }
        for (; c + 8 <= cols; c += 8)
        {
            var w = Weights8(row, c, format, ref magnitudes);
            a0 = Fma.MultiplyAdd(w, Vector256.Load(x0 + c), a0);
            a1 = Fma.MultiplyAdd(w, Vector256.Load(x1 + c), a1);
            a2 = Fma.MultiplyAdd(w, Vector256.Load(x2 + c), a2);
            a3 = Fma.MultiplyAdd(w, Vector256.Load(x3 + c), a3);
        }
        a0 += b0;
        a1 += b1;
        a2 += b2;
        a3 += b3;
        if (format == 1 && Vector256.GreaterThanOrEqualAny(magnitudes, Vector256.Create(HalfInfOrNanShifted)))
        {
            for (int k = 0; k < 4; k++) result[k] = DotF16WithSpecialsAvx2((ushort*)row, cols, x[k].X);
            return;
        }
        var sums = SumFour(a0, a1, a2, a3);
        float s0 = sums[0], s1 = sums[1], s2 = sums[2], s3 = sums[3];
        ScalarTail(row, c, cols, x0, x1, x2, x3, result, s0, s1, s2, s3, format);
    }

    /// <summary>
    /// Columns from which <see cref="Dot4RowsF16ScaledAvx2"/> replaces one row at a time: four tokens' inputs (16 KiB at
    /// 1024 columns) no longer fit L1 beside the rows. Below, the extra pass per chunk costs more than the shared input
    /// loads save (in-process A/B, two threads, SmolLM2-135M shape, 576 and 1536 columns, 32 sequences: −11% to −15%).
    /// </summary>
    public const int Dot4RowsMinColumnsAvx2 = 1024;

    /// <summary>
    /// The 256-bit <see cref="Dot4RowsF16ScaledAvx512"/>: four tokens against <paramref name="rows"/> consecutive finite
    /// F16 rows (inputs pre-scaled), in column chunks of <see cref="Dot4ChunkColumns"/> so the four inputs stay in L1,
    /// two rows at a time. Sixteen registers cannot hold two rows' even and odd accumulators (sixteen), so each chunk
    /// runs twice per row pair, once for the even 8-column steps and once for the odd: every accumulator still takes
    /// its columns in order, so each result is bit for bit that of <see cref="Dot4F16ScaledAvx2"/>, and each input load
    /// serves two rows.
    /// </summary>
    public static void Dot4RowsF16ScaledAvx2(byte* first, long rowBytes, int rows, int cols, ActivationRow* x, float* results)
    {
        int stepsEnd = cols / 16 * 16;
        var saved = stackalloc Vector256<float>[8 * rows];
        int chunk = stepsEnd < 2 * Dot4ChunkColumns ? stepsEnd : Dot4ChunkColumns;
        for (int start = 0; start < stepsEnd; start += chunk)
            RowPairPasses<HalfRows>(first, rowBytes, rows, start, Math.Min(stepsEnd, start + chunk), x, saved, rows * rowBytes);
        for (int r = 0; r < rows; r++)
            Dot4Avx2(first + r * rowBytes, cols, x, results + 4 * r, 3, stepsEnd > 0 ? saved + 8 * r : null, stepsEnd);
    }

    /// <summary>Where the row-pair passes read eight weights of a row: finite F16 halves, or floats already widened.</summary>
    private interface IEightWeights
    {
        static abstract Vector256<float> Eight(byte* row, int column);
    }

    /// <summary>Where the 512-bit passes read sixteen weights of a row: finite F16 halves, or floats already widened.</summary>
    private interface ISixteenWeights
    {
        static abstract Vector512<float> Sixteen(byte* row, int column);
    }

    private struct HalfRows : IEightWeights, ISixteenWeights
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Eight(byte* row, int column) => RawHalves(WidenSigned((ushort*)row + column));

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Sixteen(byte* row, int column) => RawHalves(WidenSigned512((ushort*)row + column));
    }

    private struct WidenedRows : IEightWeights, ISixteenWeights
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector256<float> Eight(byte* row, int column) => Vector256.Load((float*)row + column);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Sixteen(byte* row, int column) => Vector512.Load((float*)row + column);
    }

    /// <summary>
    /// Columns [start, end) of <paramref name="rows"/> rows (row r at <paramref name="first"/> + r·rowBytes) against four
    /// tokens: the rows two at a time (an odd last row alone), the even and then the odd 8-column steps of each, into
    /// eight accumulators per row at <paramref name="saved"/> + 8r (even 0–3, odd 4–7). The even pass of F16 rows fetches
    /// <paramref name="prefetchDistance"/> bytes on (0: none).
    /// </summary>
    private static void RowPairPasses<TRows>(byte* first, long rowBytes, int rows, int start, int end, ActivationRow* x,
        Vector256<float>* saved, long prefetchDistance) where TRows : struct, IEightWeights
    {
        int r = 0;
        for (; r + 2 <= rows; r += 2)
        {
            byte* row = first + r * rowBytes;
            HalfSteps<TRows>(row, rowBytes, start, end, 0, x, saved + 8 * r, saved + 8 * r + 8, prefetchDistance);
            HalfSteps<TRows>(row, rowBytes, start, end, 8, x, saved + 8 * r + 4, saved + 8 * r + 12, 0);
        }
        if (r < rows)
        {
            byte* row = first + r * rowBytes;
            HalfSteps<TRows>(row, 0, start, end, 0, x, saved + 8 * r, null, prefetchDistance);
            HalfSteps<TRows>(row, 0, start, end, 8, x, saved + 8 * r + 4, null, 0);
        }
    }

    /// <summary>
    /// From this many four-token groups on, <see cref="DotGroupsRowsF16ScaledAvx2"/> takes the rows. In a scratch harness
    /// (16 rows of 2048 and 8192 columns from L2, one thread, Zen 3) widening each chunk once ran 1.13–1.37× the speed
    /// of <see cref="Dot4RowsF16ScaledAvx2"/> at 32 tokens, but 0.80× at 8 and 0.46× at 4. With rebased halves (Intel,
    /// where converting costs about ten operations per eight halves) two groups already gain: Intel Xeon with
    /// DOTNET_EnableAVX512=0, two threads, in-process A/B on whole prompts: +2% (SmolLM2-135M shape) and +6%
    /// (Qwen2.5-0.5B) at 8 tokens, +8% and +10% at 12.
    /// </summary>
    public static readonly int WidenOnceMinGroups = RawHalvesAvoidDenormals ? 2 : 4;

    /// <summary>
    /// From this many four-token groups on, <see cref="DotGroupsRowsF16ScaledAvx512"/> takes the rows. Intel Xeon (family
    /// 6 model 207), rebased halves, in-process A/B at two threads against <see cref="Dot4RowsF16ScaledAvx512"/>
    /// (SmolLM2-135M and Qwen2.5-0.5B shapes): 0.86× at one group, 1.16–1.21× at two, 1.34–1.40× at three, 1.69–1.75× at
    /// 32. Elsewhere the halves convert in three operations rather than eight, so the AVX2 kernel's threshold measured on
    /// Zen 3 (four groups) stands; not measured on AMD's AVX-512.
    /// </summary>
    public static readonly int WidenOnceMinGroups512 = RawHalvesAvoidDenormals ? 2 : 4;

    /// <summary>
    /// Columns a chunk of <see cref="DotGroupsRowsF16ScaledAvx512"/> widens at a time: sixteen rows of them take 64 KiB,
    /// read from L2 by every group. Against 512 columns (32 KiB, L1): 1.08× on the SmolLM2-135M shape, 1.02× on
    /// Qwen2.5-0.5B; 256 columns 0.98×, 2048 and more no better than 1024.
    /// </summary>
    private const int WidenChunk512 = 1024;

    /// <summary>Scratch <see cref="DotGroupsRowsF16ScaledAvx2"/> or <see cref="DotGroupsRowsF16ScaledAvx512"/> needs for <paramref name="rows"/> rows and <paramref name="groups"/> groups.</summary>
    public static long WidenOnceScratchBytes(int rows, int groups) => SavedBytes512(rows, groups) + (long)rows * Math.Max(Dot4ChunkColumns, WidenChunk512) * sizeof(float);

    /// <summary>The accumulators <see cref="DotGroupsRowsF16ScaledAvx2"/> keeps at the start of its scratch: eight per row and group.</summary>
    private static long SavedBytes(int rows, int groups) => (long)groups * rows * 8 * sizeof(Vector256<float>);

    /// <summary>The accumulators <see cref="DotGroupsRowsF16ScaledAvx512"/> keeps at the start of its scratch: eight per row and group.</summary>
    private static long SavedBytes512(int rows, int groups) => (long)groups * rows * 8 * sizeof(Vector512<float>);

    /// <summary>
    /// <see cref="Dot4RowsF16ScaledAvx2"/> for <paramref name="groups"/> groups of four tokens at once (rows of at least
    /// <see cref="Dot4RowsMinColumnsAvx2"/> columns): each column chunk of the rows is widened to floats once, into
    /// <paramref name="scratch"/> (<see cref="WidenOnceScratchBytes"/>), and every group runs over those floats, where
    /// the four-token kernel widens the halves again for every group. Each accumulator takes the same products in the same
    /// order, so each result is bit for bit the one-token kernel's. Token t's pre-scaled input is at
    /// <paramref name="x"/> + t·cols; its result for row r goes to <paramref name="results"/>[t·resultStride + r].
    /// </summary>
    public static void DotGroupsRowsF16ScaledAvx2(byte* first, long rowBytes, int rows, int cols, float* x, int groups,
        float* results, int resultStride, byte* scratch)
    {
        int stepsEnd = cols / 16 * 16;
        var saved = (Vector256<float>*)scratch;
        float* widened = (float*)(scratch + SavedBytes(rows, groups));
        ActivationRow* four = stackalloc ActivationRow[4];
        for (int start = 0; start < stepsEnd; start += Dot4ChunkColumns)
        {
            int end = Math.Min(stepsEnd, start + Dot4ChunkColumns);
            for (int r = 0; r < rows; r++)
            {
                var source = (ushort*)(first + r * rowBytes);
                float* target = widened + (long)r * Dot4ChunkColumns - start;
                for (int c = start; c < end; c += 8)
                {
                    // the next tile's rows, as the four-token kernel's even pass fetches them
                    if ((c & 31) == 0) Sse.Prefetch1((byte*)(source + c) + rows * rowBytes);
                    RawHalves(WidenSigned(source + c)).Store(target + c);
                }
            }
            // widened row r's column c sits at widened + r·chunk + (c − start)
            for (int g = 0; g < groups; g++)
            {
                SetFour(four, x, 4 * g, cols);
                RowPairPasses<WidenedRows>((byte*)(widened - start), Dot4ChunkColumns * sizeof(float), rows, start, end, four, saved + 8 * rows * g, 0);
            }
        }
        float* result = stackalloc float[4];
        for (int g = 0; g < groups; g++)
        {
            SetFour(four, x, 4 * g, cols);
            for (int r = 0; r < rows; r++)
            {
                Dot4Avx2(first + r * rowBytes, cols, four, result, 3, saved + 8 * rows * g + 8 * r, stepsEnd);
                for (int k = 0; k < 4; k++) results[(long)(4 * g + k) * resultStride + r] = result[k];
            }
        }
    }

    private static void SetFour(ActivationRow* four, float* x, int token, int cols)
    {
        for (int k = 0; k < 4; k++) four[k] = new ActivationRow(x + (long)(token + k) * cols, null, null, null, null);
    }

    /// <summary>
    /// The even (<paramref name="phase"/> 0) or odd (8) 8-column steps of <see cref="Dot4Avx2"/> over [start, end) for
    /// one row read as <typeparamref name="TRows"/>, or two (<paramref name="secondSaved"/> given, the second row
    /// <paramref name="rowBytes"/> on), into four accumulators per row kept in memory. The even pass of F16 rows fetches
    /// the same columns <paramref name="prefetchDistance"/> bytes on (the next tile's rows) into L2, one line per 32 columns.
    /// </summary>
    private static void HalfSteps<TRows>(byte* row, long rowBytes, int start, int end, int phase, ActivationRow* x,
        Vector256<float>* firstSaved, Vector256<float>* secondSaved, long prefetchDistance) where TRows : struct, IEightWeights
    {
        bool two = secondSaved != null;
        Vector256<float> f0 = default, f1 = default, f2 = default, f3 = default, s0 = default, s1 = default, s2 = default, s3 = default;
        if (start > 0)
        {
            f0 = firstSaved[0]; f1 = firstSaved[1]; f2 = firstSaved[2]; f3 = firstSaved[3];
            if (two) { s0 = secondSaved[0]; s1 = secondSaved[1]; s2 = secondSaved[2]; s3 = secondSaved[3]; }
        }
        byte* second = row + rowBytes;
        float* x0 = x[0].X, x1 = x[1].X, x2 = x[2].X, x3 = x[3].X;
        for (int c = start + phase; c < end; c += 16)
        {
            if (prefetchDistance != 0 && (c & 31) == 0)
            {
                Sse.Prefetch1(row + 2 * c + prefetchDistance);
                if (two) Sse.Prefetch1(second + 2 * c + prefetchDistance);
            }
            var w = TRows.Eight(row, c);
            var input = Vector256.Load(x0 + c);
            f0 = Fma.MultiplyAdd(w, input, f0);
            if (two)
            {
                var v = TRows.Eight(second, c);
                s0 = Fma.MultiplyAdd(v, input, s0);
                input = Vector256.Load(x1 + c);
                f1 = Fma.MultiplyAdd(w, input, f1);
                s1 = Fma.MultiplyAdd(v, input, s1);
                input = Vector256.Load(x2 + c);
                f2 = Fma.MultiplyAdd(w, input, f2);
                s2 = Fma.MultiplyAdd(v, input, s2);
                input = Vector256.Load(x3 + c);
                f3 = Fma.MultiplyAdd(w, input, f3);
                s3 = Fma.MultiplyAdd(v, input, s3);
            }
            else
            {
                f1 = Fma.MultiplyAdd(w, Vector256.Load(x1 + c), f1);
                f2 = Fma.MultiplyAdd(w, Vector256.Load(x2 + c), f2);
                f3 = Fma.MultiplyAdd(w, Vector256.Load(x3 + c), f3);
            }
        }
        firstSaved[0] = f0; firstSaved[1] = f1; firstSaved[2] = f2; firstSaved[3] = f3;
        if (two) { secondSaved[0] = s0; secondSaved[1] = s1; secondSaved[2] = s2; secondSaved[3] = s3; }
    }

    /// <summary>Eight weights as floats; F16 also feeds the Inf/NaN check (see <see cref="DotF16Avx2"/>).</summary>
    // The 512-bit four-token kernels keep each column's arithmetic exactly that of the one-token 512-bit kernels (even
    // and odd 16-column accumulators, 16-column tail steps into the even one, then the scalar tail), so batching never
    // changes a token's result.

    public static void Dot4F32Avx512(byte* row, int cols, ActivationRow* x, float* result) => Dot4Avx512(row, cols, x, result, 0);

    public static void Dot4F16Avx512(byte* row, int cols, ActivationRow* x, float* result) => Dot4Avx512(row, cols, x, result, 1);

    /// <summary>Four tokens against a finite F16 row, inputs pre-scaled by <see cref="F16InputScale"/>: each column as <see cref="DotF16ScaledAvx512"/>.</summary>
    public static void Dot4F16ScaledAvx512(byte* row, int cols, ActivationRow* x, float* result) => Dot4Avx512(row, cols, x, result, 3);

    /// <summary>Four tokens against a finite F16 row, inputs pre-scaled: each column as <see cref="DotF16ScaledAvx2"/>.</summary>
    public static void Dot4F16ScaledAvx2(byte* row, int cols, ActivationRow* x, float* result) => Dot4Avx2(row, cols, x, result, 3);

    public static void Dot4BF16Avx512(byte* row, int cols, ActivationRow* x, float* result) => Dot4Avx512(row, cols, x, result, 2);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Dot4Avx512(byte* row, int cols, ActivationRow* x, float* result, int format) =>
        Dot4Avx512(row, cols, x, result, format, null, 0);

    /// <summary>
    /// Four tokens against <paramref name="rows"/> consecutive finite F16 rows (inputs pre-scaled), two rows at a time
    /// (each input load serves both) while the rows of the next tile are prefetched. Rows of 1024 columns or more take
    /// their 32-column steps in chunks of <see cref="Dot4ChunkColumns"/> for all rows before the next chunk: four wide
    /// inputs no longer fit the L1 cache beside the rows (2048 columns of four tokens are 32 KiB) and were re-read from
    /// L2 for every row. Each row's FMAs run in the same order into the same accumulators as
    /// <see cref="Dot4F16ScaledAvx512"/>, so every result is bit for bit the same. <paramref name="results"/> gets four
    /// per row.
    /// </summary>
    public static void Dot4RowsF16ScaledAvx512(byte* first, long rowBytes, int rows, int cols, ActivationRow* x, float* results)
    {
        int stepsEnd = cols / 32 * 32;
        var saved = stackalloc Vector512<float>[8 * rows];
        int chunk = stepsEnd < 2 * Dot4ChunkColumns ? stepsEnd : Dot4ChunkColumns;
        for (int start = 0; start < stepsEnd; start += chunk)
        {
            int end = Math.Min(stepsEnd, start + chunk);
            int r = 0;
            for (; r + 2 <= rows; r += 2)
                Dot4StepsTwoRows<HalfRows>(first + r * rowBytes, rowBytes, start, end, x, saved + 8 * r, rows * rowBytes);
            if (r < rows)
                Dot4Steps<HalfRows>(first + r * rowBytes, start, end, x, saved + 8 * r);
        }
        for (int r = 0; r < rows; r++)
            Dot4Avx512(first + r * rowBytes, cols, x, results + 4 * r, 3, stepsEnd > 0 ? saved + 8 * r : null, stepsEnd);
    }

    /// <summary>Columns a chunk of <see cref="Dot4RowsF16ScaledAvx512"/> covers: four tokens' inputs take 8 KiB.</summary>
    public const int Dot4ChunkColumns = 512;

    /// <summary>
    /// The 512-bit <see cref="DotGroupsRowsF16ScaledAvx2"/>: each column chunk of the rows widened to floats once, then
    /// every group of four tokens over those floats, two rows at a time, as <see cref="Dot4RowsF16ScaledAvx512"/> runs
    /// over the halves: each result is bit for bit the one-token kernel's.
    /// </summary>
    public static void DotGroupsRowsF16ScaledAvx512(byte* first, long rowBytes, int rows, int cols, float* x, int groups,
        float* results, int resultStride, byte* scratch)
    {
        int stepsEnd = cols / 32 * 32;
        var saved = (Vector512<float>*)scratch;
        float* widened = (float*)(scratch + SavedBytes512(rows, groups));
        const long widenedRowBytes = WidenChunk512 * sizeof(float);
        ActivationRow* four = stackalloc ActivationRow[4];
        for (int start = 0; start < stepsEnd; start += WidenChunk512)
        {
            int end = Math.Min(stepsEnd, start + WidenChunk512);
            for (int r = 0; r < rows; r++)
            {
                var source = (ushort*)(first + r * rowBytes);
                float* target = widened + (long)r * WidenChunk512 - start;
                for (int c = start; c < end; c += 32)
                {
                    // the next tile's rows, as the four-token kernel fetches them
                    Sse.Prefetch1((byte*)(source + c) + rows * rowBytes);
                    RawHalves(WidenSigned512(source + c)).Store(target + c);
                    RawHalves(WidenSigned512(source + c + 16)).Store(target + c + 16);
                }
            }
            // widened row r's column c sits at widened + r·chunk + (c − start)
            byte* rowsFrom = (byte*)(widened - start);
            for (int g = 0; g < groups; g++)
            {
                SetFour(four, x, 4 * g, cols);
                var groupSaved = saved + 8 * rows * g;
                int r = 0;
                for (; r + 2 <= rows; r += 2)
                    Dot4StepsTwoRows<WidenedRows>(rowsFrom + r * widenedRowBytes, widenedRowBytes, start, end, four, groupSaved + 8 * r, 0);
                if (r < rows)
                    Dot4Steps<WidenedRows>(rowsFrom + r * widenedRowBytes, start, end, four, groupSaved + 8 * r);
            }
        }
        float* result = stackalloc float[4];
        for (int g = 0; g < groups; g++)
        {
            SetFour(four, x, 4 * g, cols);
            for (int r = 0; r < rows; r++)
            {
                Dot4Avx512(first + r * rowBytes, cols, four, result, 3, stepsEnd > 0 ? saved + 8 * rows * g + 8 * r : null, stepsEnd);
                for (int k = 0; k < 4; k++) results[(long)(4 * g + k) * resultStride + r] = result[k];
            }
        }
    }

    /// <summary>The 32-column steps of <see cref="Dot4Avx512"/> over [start, end) for a finite F16 row read as <typeparamref name="TRows"/>, its eight accumulators kept in <paramref name="saved"/>.</summary>
    private static void Dot4Steps<TRows>(byte* row, int start, int end, ActivationRow* x, Vector512<float>* saved) where TRows : struct, ISixteenWeights
    {
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
        Vector512<float> b0 = default, b1 = default, b2 = default, b3 = default;
        if (start > 0)
        {
            a0 = saved[0]; a1 = saved[1]; a2 = saved[2]; a3 = saved[3];
            b0 = saved[4]; b1 = saved[5]; b2 = saved[6]; b3 = saved[7];
        }
        float* x0 = x[0].X, x1 = x[1].X, x2 = x[2].X, x3 = x[3].X;
        for (int c = start; c < end; c += 32)
        {
            var w = TRows.Sixteen(row, c);
            var v = TRows.Sixteen(row, c + 16);
            a0 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x0 + c), a0);
            a1 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x1 + c), a1);
            a2 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x2 + c), a2);
            a3 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x3 + c), a3);
            b0 = Avx512F.FusedMultiplyAdd(v, Vector512.Load(x0 + c + 16), b0);
            b1 = Avx512F.FusedMultiplyAdd(v, Vector512.Load(x1 + c + 16), b1);
            b2 = Avx512F.FusedMultiplyAdd(v, Vector512.Load(x2 + c + 16), b2);
            b3 = Avx512F.FusedMultiplyAdd(v, Vector512.Load(x3 + c + 16), b3);
        }
        saved[0] = a0; saved[1] = a1; saved[2] = a2; saved[3] = a3;
        saved[4] = b0; saved[5] = b1; saved[6] = b2; saved[7] = b3;
    }

    /// <summary>
    /// <see cref="Dot4Steps"/> for two rows at once (their sixteen accumulators in <paramref name="saved"/>, row by row):
    /// each input vector loaded once serves both rows, so the kernel is no longer bound by input loads (one per FMA).
    /// The same columns <paramref name="prefetchDistance"/> bytes on (the next tile's rows) are fetched into L2 meanwhile:
    /// a tile's rows are read a chunk at a time, a pattern the hardware prefetcher does not follow from memory.
    /// </summary>
    private static void Dot4StepsTwoRows<TRows>(byte* row, long rowBytes, int start, int end, ActivationRow* x, Vector512<float>* saved,
        long prefetchDistance) where TRows : struct, ISixteenWeights
    {
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
        Vector512<float> b0 = default, b1 = default, b2 = default, b3 = default;
        Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default;
        Vector512<float> d0 = default, d1 = default, d2 = default, d3 = default;
        if (start > 0)
        {
            a0 = saved[0]; a1 = saved[1]; a2 = saved[2]; a3 = saved[3];
            b0 = saved[4]; b1 = saved[5]; b2 = saved[6]; b3 = saved[7];
            c0 = saved[8]; c1 = saved[9]; c2 = saved[10]; c3 = saved[11];
            d0 = saved[12]; d1 = saved[13]; d2 = saved[14]; d3 = saved[15];
        }
        byte* second = row + rowBytes;
        float* x0 = x[0].X, x1 = x[1].X, x2 = x[2].X, x3 = x[3].X;
        for (int c = start; c < end; c += 32)
        {
            if (prefetchDistance != 0)
            {
                Sse.Prefetch1(row + 2 * c + prefetchDistance);
                Sse.Prefetch1(second + 2 * c + prefetchDistance);
            }
            TwoRowsFourTokens<TRows>(row, second, c, x0, x1, x2, x3, ref a0, ref a1, ref a2, ref a3, ref c0, ref c1, ref c2, ref c3);
            TwoRowsFourTokens<TRows>(row, second, c + 16, x0, x1, x2, x3, ref b0, ref b1, ref b2, ref b3, ref d0, ref d1, ref d2, ref d3);
        }
        saved[0] = a0; saved[1] = a1; saved[2] = a2; saved[3] = a3;
        saved[4] = b0; saved[5] = b1; saved[6] = b2; saved[7] = b3;
        saved[8] = c0; saved[9] = c1; saved[10] = c2; saved[11] = c3;
        saved[12] = d0; saved[13] = d1; saved[14] = d2; saved[15] = d3;
    }

    /// <summary>Sixteen columns from <paramref name="c"/> of two rows against four tokens: f* accumulate the first row, s* the second.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void TwoRowsFourTokens<TRows>(byte* first, byte* second, int c, float* x0, float* x1, float* x2, float* x3,
        ref Vector512<float> f0, ref Vector512<float> f1, ref Vector512<float> f2, ref Vector512<float> f3,
        ref Vector512<float> s0, ref Vector512<float> s1, ref Vector512<float> s2, ref Vector512<float> s3) where TRows : struct, ISixteenWeights
    {
        var w = TRows.Sixteen(first, c);
        var v = TRows.Sixteen(second, c);
        var input = Vector512.Load(x0 + c);
        f0 = Avx512F.FusedMultiplyAdd(w, input, f0);
        s0 = Avx512F.FusedMultiplyAdd(v, input, s0);
        input = Vector512.Load(x1 + c);
        f1 = Avx512F.FusedMultiplyAdd(w, input, f1);
        s1 = Avx512F.FusedMultiplyAdd(v, input, s1);
        input = Vector512.Load(x2 + c);
        f2 = Avx512F.FusedMultiplyAdd(w, input, f2);
        s2 = Avx512F.FusedMultiplyAdd(v, input, s2);
        input = Vector512.Load(x3 + c);
        f3 = Avx512F.FusedMultiplyAdd(w, input, f3);
        s3 = Avx512F.FusedMultiplyAdd(v, input, s3);
    }

    /// <summary>One 32-column step of the 512-bit four-token kernels: columns c.. into the even accumulators, c+16.. into the odd ones.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Step32(byte* row, int c, int format, float* x0, float* x1, float* x2, float* x3,
        ref Vector512<float> a0, ref Vector512<float> a1, ref Vector512<float> a2, ref Vector512<float> a3,
        ref Vector512<float> b0, ref Vector512<float> b1, ref Vector512<float> b2, ref Vector512<float> b3, ref Vector512<uint> magnitudes)
    {
        var w = Weights16(row, c, format, ref magnitudes);
        var v = Weights16(row, c + 16, format, ref magnitudes);
        a0 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x0 + c), a0);
        a1 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x1 + c), a1);
        a2 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x2 + c), a2);
        a3 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x3 + c), a3);
        b0 = Avx512F.FusedMultiplyAdd(v, Vector512.Load(x0 + c + 16), b0);
        b1 = Avx512F.FusedMultiplyAdd(v, Vector512.Load(x1 + c + 16), b1);
        b2 = Avx512F.FusedMultiplyAdd(v, Vector512.Load(x2 + c + 16), b2);
        b3 = Avx512F.FusedMultiplyAdd(v, Vector512.Load(x3 + c + 16), b3);
    }

    /// <summary>As the four-token kernel, resuming at column <paramref name="from"/> with the accumulators in <paramref name="saved"/> when given.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Dot4Avx512(byte* row, int cols, ActivationRow* x, float* result, int format, Vector512<float>* saved, int from)
    {
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
        Vector512<float> b0 = default, b1 = default, b2 = default, b3 = default;
        if (saved != null)
        {
            a0 = saved[0]; a1 = saved[1]; a2 = saved[2]; a3 = saved[3];
            b0 = saved[4]; b1 = saved[5]; b2 = saved[6]; b3 = saved[7];
        }
        float* x0 = x[0].X, x1 = x[1].X, x2 = x[2].X, x3 = x[3].X;
        Vector512<uint> magnitudes = default;
        int c = from;
        for (; c + 32 <= cols; c += 32)
        {
            Step32(row, c, format, x0, x1, x2, x3, ref a0, ref a1, ref a2, ref a3, ref b0, ref b1, ref b2, ref b3, ref magnitudes);
        }
        for (; c + 16 <= cols; c += 16)
        {
            var w = Weights16(row, c, format, ref magnitudes);
            a0 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x0 + c), a0);
            a1 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x1 + c), a1);
            a2 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x2 + c), a2);
            a3 = Avx512F.FusedMultiplyAdd(w, Vector512.Load(x3 + c), a3);
        }
        if (format == 1 && Vector512.GreaterThanOrEqualAny(magnitudes, Vector512.Create(HalfInfOrNanShifted)))
        {
            for (int k = 0; k < 4; k++) result[k] = DotF16WithSpecialsAvx2((ushort*)row, cols, x[k].X);
            return;
        }
        var sums = SumFour(a0 + b0, a1 + b1, a2 + b2, a3 + b3);
        float s0 = sums[0], s1 = sums[1], s2 = sums[2], s3 = sums[3];
        ScalarTail(row, c, cols, x0, x1, x2, x3, result, s0, s1, s2, s3, format);
    }

    /// <summary>
    /// <see cref="Vector512.Sum"/> of four vectors at once, each added in the same tree (pairs of neighbours, then pairs
    /// of those within each 128-bit lane, then the lanes as (0 + 1) + (2 + 3)), so every sum has the same bits as
    /// Vector512.Sum gives: one shuffle tree for four tokens, where four separate sums took three times the operations
    /// (Intel Xeon, SmolLM2-135M shape F16, two threads, in-process A/B: +6% for a 128-token prompt, +4% for 8 tokens).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<float> SumFour(Vector512<float> v0, Vector512<float> v1, Vector512<float> v2, Vector512<float> v3)
    {
        // per 128-bit lane: (v0[0]+v0[1], v0[2]+v0[3], v1[0]+v1[1], v1[2]+v1[3]), and the same for v2, v3
        var pairs01 = Avx512F.Shuffle(v0, v1, 0b10_00_10_00) + Avx512F.Shuffle(v0, v1, 0b11_01_11_01);
        var pairs23 = Avx512F.Shuffle(v2, v3, 0b10_00_10_00) + Avx512F.Shuffle(v2, v3, 0b11_01_11_01);
        // per 128-bit lane k: the sums of lanes 4k..4k+3 of v0, v1, v2, v3
        var quads = Avx512F.Shuffle(pairs01, pairs23, 0b10_00_10_00) + Avx512F.Shuffle(pairs01, pairs23, 0b11_01_11_01);
        var low = quads.GetLower();
        var high = quads.GetUpper();
        return (low.GetLower() + low.GetUpper()) + (high.GetLower() + high.GetUpper());
    }

    /// <summary><see cref="Vector256.Sum"/> of four vectors at once, in its tree (see the 512-bit <see cref="SumFour(Vector512{float}, Vector512{float}, Vector512{float}, Vector512{float})"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<float> SumFour(Vector256<float> v0, Vector256<float> v1, Vector256<float> v2, Vector256<float> v3)
    {
        var pairs01 = Avx.Shuffle(v0, v1, 0b10_00_10_00) + Avx.Shuffle(v0, v1, 0b11_01_11_01);
        var pairs23 = Avx.Shuffle(v2, v3, 0b10_00_10_00) + Avx.Shuffle(v2, v3, 0b11_01_11_01);
        var quads = Avx.Shuffle(pairs01, pairs23, 0b10_00_10_00) + Avx.Shuffle(pairs01, pairs23, 0b11_01_11_01);
        return quads.GetLower() + quads.GetUpper();
    }

    /// <summary>The four-token kernels' last columns, one at a time, after their vector sums <paramref name="s0"/>..s3.</summary>
    private static void ScalarTail(byte* row, int c, int cols, float* x0, float* x1, float* x2, float* x3, float* result,
        float s0, float s1, float s2, float s3, int format)
    {
        // pre-scaled inputs (format 3) are scaled back exactly, as the one-token kernel does
        float unscale = format == 3 ? HalfUnscale : 1f;
        for (; c < cols; c++)
        {
            float w = format switch
            {
                0 => ((float*)row)[c],
                1 or 3 => Fp.HalfToFloat(((ushort*)row)[c]),
                _ => Fp.BFloat16ToFloat(((ushort*)row)[c]),
            };
            s0 += w * (x0[c] * unscale);
            s1 += w * (x1[c] * unscale);
            s2 += w * (x2[c] * unscale);
            s3 += w * (x3[c] * unscale);
        }
        result[0] = s0;
        result[1] = s1;
        result[2] = s2;
        result[3] = s3;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Weights16(byte* row, int c, int format, ref Vector512<uint> magnitudes)
    {
        if (format == 0) return Vector512.Load((float*)row + c);
        if (format == 3) return RawHalves(WidenSigned512((ushort*)row + c));
        if (format == 1)
        {
            var h = WidenSigned512((ushort*)row + c);
            magnitudes = TrackMagnitude(h, magnitudes);
            return FiniteHalfToSingle(h);
        }
        return (Widen512((ushort*)row + c) << 16).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> Weights8(byte* row, int c, int format, ref Vector256<uint> magnitudes)
    {
        if (format == 0) return Vector256.Load((float*)row + c);
        if (format == 3) return RawHalves(WidenSigned((ushort*)row + c));
        if (format == 1)
        {
            var h = WidenSigned((ushort*)row + c);
            magnitudes = TrackMagnitude(h, magnitudes);
            return FiniteHalfToSingle(h);
        }
        return (Widen((ushort*)row + c) << 16).AsSingle();
    }
}
