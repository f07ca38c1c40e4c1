namespace Loom.Inference.Sampling;

/// <summary>
/// The 32-bit Mersenne Twister (C++ std::mt19937) and libstdc++'s generate_canonical&lt;double, 53&gt;: the generator and
/// uniform draw llama.cpp's distribution sampler uses, so a seed picks the same tokens in Loom as in llama.cpp.
/// </summary>
internal sealed class Mt19937
{
    private const int N = 624, M = 397;
    private readonly uint[] _state = new uint[N];
    private int _index;

    public Mt19937(uint seed) => Seed(seed);

    public void Seed(uint seed)
    {
        _state[0] = seed;
        for (int i = 1; i < N; i++) _state[i] = 1812433253u * (_state[i - 1] ^ (_state[i - 1] >> 30)) + (uint)i;
        _index = N;
    }

    public uint Next()
    {
        if (_index >= N) Twist();
        uint y = _state[_index++];
        y ^= y >> 11;
        y ^= (y << 7) & 0x9D2C5680u;
        y ^= (y << 15) & 0xEFC60000u;
        return y ^ (y >> 18);
    }

    private void Twist()
    {
        for (int i = 0; i < N; i++)
        {
            uint y = (_state[i] & 0x80000000u) | (_state[(i + 1) % N] & 0x7FFFFFFFu);
            _state[i] = _state[(i + M) % N] ^ (y >> 1) ^ ((y & 1) != 0 ? 0x9908B0DFu : 0u);
        }
        _index = 0;
    }

    /// <summary>Uniform in [0, 1) from two 32-bit draws, low word first, as libstdc++ builds a 53-bit double.</summary>
    public double NextCanonical()
    {
        double sum = Next();
        sum += Next() * 4294967296.0;
        double r = sum / 18446744073709551616.0;
        return r >= 1.0 ? Math.BitDecrement(1.0) : r;
    }
}
