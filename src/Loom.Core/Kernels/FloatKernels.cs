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

    public static float DotF16Avx2(byte* row, int cols, in ActivationRow x)
    {
        var w = (ushort*)row;
        float* xs = x.X;
        Vector256<float> a0 = default, a1 = default;
        int c = 0;
        for (; c + 16 <= cols; c += 16)
        {
            a0 = Fma.MultiplyAdd(HalfToSingle(Widen(w + c)), Vector256.Load(xs + c), a0);
            a1 = Fma.MultiplyAdd(HalfToSingle(Widen(w + c + 8)), Vector256.Load(xs + c + 8), a1);
        }
        for (; c + 8 <= cols; c += 8) a0 = Fma.MultiplyAdd(HalfToSingle(Widen(w + c)), Vector256.Load(xs + c), a0);
        float sum = Vector256.Sum(a0 + a1);
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

    public static float DotF16Avx512(byte* row, int cols, in ActivationRow x)
    {
        var w = (ushort*)row;
        float* xs = x.X;
        Vector512<float> a0 = default, a1 = default;
        int c = 0;
        for (; c + 32 <= cols; c += 32)
        {
            a0 = Avx512F.FusedMultiplyAdd(HalfToSingle(Widen512(w + c)), Vector512.Load(xs + c), a0);
            a1 = Avx512F.FusedMultiplyAdd(HalfToSingle(Widen512(w + c + 16)), Vector512.Load(xs + c + 16), a1);
        }
        for (; c + 16 <= cols; c += 16) a0 = Avx512F.FusedMultiplyAdd(HalfToSingle(Widen512(w + c)), Vector512.Load(xs + c), a0);
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
    private static void Dot4Avx2(byte* row, int cols, ActivationRow* x, float* result, int format)
    {
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        float* x0 = x[0].X, x1 = x[1].X, x2 = x[2].X, x3 = x[3].X;
        int c = 0;
        for (; c + 8 <= cols; c += 8)
        {
            var w = format switch
            {
                0 => Vector256.Load((float*)row + c),
                1 => HalfToSingle(Widen((ushort*)row + c)),
                _ => (Widen((ushort*)row + c) << 16).AsSingle(),
            };
            a0 = Fma.MultiplyAdd(w, Vector256.Load(x0 + c), a0);
            a1 = Fma.MultiplyAdd(w, Vector256.Load(x1 + c), a1);
            a2 = Fma.MultiplyAdd(w, Vector256.Load(x2 + c), a2);
            a3 = Fma.MultiplyAdd(w, Vector256.Load(x3 + c), a3);
        }
        float s0 = Vector256.Sum(a0), s1 = Vector256.Sum(a1), s2 = Vector256.Sum(a2), s3 = Vector256.Sum(a3);
        for (; c < cols; c++)
        {
            float w = format switch
            {
                0 => ((float*)row)[c],
                1 => Fp.HalfToFloat(((ushort*)row)[c]),
                _ => Fp.BFloat16ToFloat(((ushort*)row)[c]),
            };
            s0 += w * x0[c];
            s1 += w * x1[c];
            s2 += w * x2[c];
            s3 += w * x3[c];
        }
        result[0] = s0;
        result[1] = s1;
        result[2] = s2;
        result[3] = s3;
    }
}
