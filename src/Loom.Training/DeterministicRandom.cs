using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Loom.Training;

/// <summary>
/// SplitMix64: a tiny generator whose whole state is one ulong, so it is saved in checkpoints and streams are
/// reproducible on every platform (System.Random's algorithm is not specified to stay the same).
/// </summary>
public sealed class DeterministicRandom(ulong state)
{
    /// <summary>SplitMix64's increment (the golden ratio in 64 bits).</summary>
    internal const ulong Golden = 0x9E3779B97F4A7C15UL;
    private const ulong MixFirst = 0xBF58476D1CE4E5B9UL, MixSecond = 0x94D049BB133111EBUL;

    public ulong State { get; set; } = state;

    public ulong NextUInt64()
    {
        ulong z = State += Golden;
        return Mix(z);
    }

    /// <summary>The SplitMix64 finalizer: also used as a stateless hash for dropout masks.</summary>
    public static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * MixFirst;
        z = (z ^ (z >> 27)) * MixSecond;
        return z ^ (z >> 31);
    }

    /// <summary><see cref="Mix(ulong)"/> in four lanes (the same integer arithmetic, so the same bits).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<ulong> Mix(Vector256<ulong> z)
    {
        z = (z ^ (z >> 30)) * Vector256.Create(MixFirst);
        z = (z ^ (z >> 27)) * Vector256.Create(MixSecond);
        return z ^ (z >> 31);
    }

    /// <summary>Uniform in [0, 1) with 53 random bits.</summary>
    public double NextDouble() => (NextUInt64() >> 11) * (1.0 / (1UL << 53));

    /// <summary>Uniform integer in [0, bound).</summary>
    public int NextInt(int bound)
    {
        if (bound <= 0) throw new ArgumentOutOfRangeException(nameof(bound), bound, "must be positive");
        return (int)(NextDouble() * bound);
    }

    /// <summary>Standard normal (Box–Muller; one of the pair is used so the state advances predictably).</summary>
    public double NextGaussian()
    {
        double u1 = 1.0 - NextDouble(), u2 = NextDouble();
        return Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2.0 * Math.PI * u2);
    }

    /// <summary>Fisher–Yates shuffle.</summary>
    public void Shuffle<T>(Span<T> items)
    {
        for (int i = items.Length - 1; i > 0; i--)
        {
            int j = NextInt(i + 1);
            (items[i], items[j]) = (items[j], items[i]);
        }
    }
}
