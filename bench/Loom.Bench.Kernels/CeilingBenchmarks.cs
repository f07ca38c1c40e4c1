using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using BenchmarkDotNet.Attributes;
using Loom.Bench.Shared;
using Loom.Core.Threading;

namespace Loom.Bench.Kernels;

/// <summary>
/// The machine's ceilings, measured with the same harness as the kernels: DRAM read and triad bandwidth, and FP32 FMA
/// peak with 256-bit (AVX2) and 512-bit (AVX-512) vectors, on 1 and 2 threads of Loom's own thread pool.
/// </summary>
public unsafe class CeilingBenchmarks
{
    /// <summary>Floats per array: 256 MiB, eight times the L3, so every pass streams from DRAM.</summary>
    public const long ArrayFloats = 64L << 20;
    /// <summary>Iterations of each FMA loop chunk; each does <see cref="FmaChains.Chains"/> independent vector FMAs.</summary>
    public const int FmaIterations = 4_000_000;
    /// <summary>Work items the FMA loop is split into (spread over the threads).</summary>
    public const int FmaChunks = 8;

    [Params(1, 2)]
    public int Threads { get; set; }

    private float* _a, _b, _c;
    private LoomThreadPool? _pool;
    private MemoryReadProbe? _read;
    private TriadWork? _triad;
    private FmaWork? _fma256, _fma512;

    /// <summary>Chunks the bandwidth loops are split into: enough to balance, each a long sequential stream.</summary>
    private const int StreamChunks = 64;

    [GlobalSetup]
    public void Setup()
    {
        nuint bytes = (nuint)(ArrayFloats * sizeof(float));
        _a = (float*)NativeMemory.AlignedAlloc(bytes, 64);
        _b = (float*)NativeMemory.AlignedAlloc(bytes, 64);
        _c = (float*)NativeMemory.AlignedAlloc(bytes, 64);
        new Span<float>(_a, (int)ArrayFloats).Fill(1f);
        new Span<float>(_b, (int)ArrayFloats).Fill(2f);
        new Span<float>(_c, (int)ArrayFloats).Fill(3f);
        _pool = new LoomThreadPool(Threads);
        _read = new MemoryReadProbe(ArrayFloats * sizeof(float));
        _triad = new TriadWork(_a, _b, _c);
        _fma256 = new FmaWork(wide: false);
        _fma512 = new FmaWork(wide: true);
    }

    /// <summary>Sums one 256 MiB array (bytes read = 256 MiB), the probe the side-by-side harness reads decode against.</summary>
    [Benchmark]
    public void MemoryRead() => _read!.ReadOnce(_pool!);

    /// <summary>a = b + s·c over 256 MiB arrays (bytes moved = 3 × 256 MiB, not counting write-allocate reads).</summary>
    [Benchmark]
    public void MemoryTriad() => _pool!.Run(_triad!, StreamChunks);

    /// <summary>FP32 FMAs on 256-bit vectors: 2 × 8 × accumulators × iterations × chunks FLOPs.</summary>
    [Benchmark]
    public float FmaAvx2()
    {
        if (!Fma.IsSupported) throw new PlatformNotSupportedException("this CPU has no FMA");
        _pool!.Run(_fma256!, FmaChunks);
        return _fma256!.Sink;
    }

    /// <summary>FP32 FMAs on 512-bit vectors: 2 × 16 × accumulators × iterations × chunks FLOPs.</summary>
    [Benchmark]
    public float FmaAvx512()
    {
        if (!Avx512F.IsSupported) throw new PlatformNotSupportedException("this CPU (or DOTNET_EnableAVX512=0) has no AVX-512");
        _pool!.Run(_fma512!, FmaChunks);
        return _fma512!.Sink;
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _pool?.Dispose();
        _read?.Dispose();
        NativeMemory.AlignedFree(_a);
        NativeMemory.AlignedFree(_b);
        NativeMemory.AlignedFree(_c);
    }

    private static (long Start, long End) Range(int chunk) =>
        (ArrayFloats * chunk / StreamChunks, ArrayFloats * (chunk + 1) / StreamChunks);

    private sealed class TriadWork(float* a, float* b, float* c) : IParallelWork
    {
        public void Execute(int chunk)
        {
            var (start, end) = Range(chunk);
            var s = Vector256.Create(0.5f);
            for (long i = start; i < end; i += 8)
                Vector256.Store(Vector256.Load(b + i) + s * Vector256.Load(c + i), a + i);
        }
    }

    private sealed class FmaWork(bool wide) : IParallelWork
    {
        private float _sink;
        public float Sink => _sink;

        public void Execute(int chunk)
        {
            float result = wide ? FmaChains.Run512(FmaIterations) : FmaChains.Run256(FmaIterations);
            lock (this) _sink += result;
        }
    }
}
