namespace Loom.Bench.SideBySide;

/// <summary>The tensor shapes of a published model, rebuilt with random weights.</summary>
internal sealed record ModelShape(
    string Name, string Architecture, int Embedding, int Layers, int Heads, int KvHeads, int FeedForward, int Vocab,
    bool QkvBias, float RopeBase, int Context)
{
    public static readonly ModelShape SmolLM2 = new("smollm2-135m", "llama", 576, 30, 9, 3, 1536, 49152, false, 100000f, 8192);
    public static readonly ModelShape Qwen25 = new("qwen2.5-0.5b", "qwen2", 896, 24, 14, 2, 4864, 151936, true, 1000000f, 32768);
    public static readonly ModelShape Llama32 = new("llama3.2-1b", "llama", 2048, 16, 32, 8, 8192, 128256, false, 500000f, 131072);

    public static readonly ModelShape[] All = [SmolLM2, Qwen25, Llama32];

    public int HeadDim => Embedding / Heads;

    public static ModelShape Parse(string name) =>
        All.FirstOrDefault(s => s.Name.Equals(name, StringComparison.OrdinalIgnoreCase))
        ?? throw new ArgumentException($"unknown shape '{name}'; known: {string.Join(", ", All.Select(s => s.Name))}");
}
