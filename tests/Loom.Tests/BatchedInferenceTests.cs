using Loom.Inference;
using Loom.Models.Architectures;
using Xunit.Abstractions;

namespace Loom.Tests;

/// <summary>
/// Batched evaluation of many sequences (mixed prefill chunks and decode steps, slots freed and reused) against each
/// sequence evaluated alone in an <see cref="InferenceSession"/>, on stories260K and random-weight architectures.
/// </summary>
public class BatchedInferenceTests(ITestOutputHelper output)
{
    // The matrix kernels are batch-invariant (a token's output row is bit-identical whatever the number of tokens in
    // the call and its place among them), and so is everything else per token, so batched logits equal a sequence
    // alone bit for bit, GELU models included.
    private const int Context = 128;

    public static TheoryData<string, int> Cases()
    {
        var cases = new TheoryData<string, int>();
        foreach (string model in ModelNames)
        foreach (int sequences in new[] { 1, 8, 32 })
            cases.Add(model, sequences);
        return cases;
    }

    private static readonly string[] ModelNames = ["stories260K", "llama", "qwen3", "gpt2"];

    private static readonly Dictionary<string, SyntheticModel> Synthetic = new()
    {
        ["llama"] = new SyntheticModel { Architecture = "llama", KvHeads = 1, RopeFrequencyFactors = true, Seed = 5 },
        ["qwen3"] = new SyntheticModel { Architecture = "qwen3", KeyLength = 32, Seed = 6 },
        ["gpt2"] = new SyntheticModel { Architecture = "gpt2", KvHeads = 4, Seed = 7 },
    };

    /// <summary>A sequence to run: its prompt and how many tokens to generate greedily after it.</summary>
    private sealed record Request(int[] Prompt, int Generate);

    /// <summary>What a sequence produced: logits after every evaluated chunk (keyed by the position they follow) and its tokens.</summary>
    private sealed class Transcript
    {
        public readonly Dictionary<int, float[]> Logits = [];
        public readonly List<int> Generated = [];
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void BatchEqualsEachSequenceAlone(string modelName, int slots)
    {
        WithModel(modelName, model =>
        {
            var random = new Random(slots * 31 + modelName.Length);
            // Half again as many sequences as slots, so finished sequences' slots are reused mid-run.
            var requests = Enumerable.Range(0, slots + (slots + 1) / 2).Select(i => new Request(
                Prompt(random, 1 + (i * 13 + slots) % 50), 1 + (i * 7) % 12)).ToArray();

            var alone = requests.Select(r => RunAlone(model, r)).ToArray();
            var batched = RunBatched(model, slots, requests, random, out int steps, out int largestStep);

            float worst = 0, worstRelative = 0;
            int compared = 0, differing = 0;
            for (int i = 0; i < requests.Length; i++)
            {
                Assert.Equal(alone[i].Generated, batched[i].Generated);
                foreach (var (position, logits) in batched[i].Logits)
                {
                    var expected = alone[i].Logits[position];
                    for (int j = 0; j < expected.Length; j++)
                    {
                        float difference = Math.Abs(expected[j] - logits[j]);
                        worst = Math.Max(worst, difference);
                        worstRelative = Math.Max(worstRelative, difference / Math.Max(1f, Math.Abs(expected[j])));
                        if (BitConverter.SingleToInt32Bits(expected[j]) != BitConverter.SingleToInt32Bits(logits[j])) differing++;
                    }
                    compared++;
                }
            }
            output.WriteLine($"{modelName}, {slots} slots, {requests.Length} sequences: {steps} calls (largest {largestStep} tokens), " +
                             $"{compared} logit rows, max |batched - alone| = {worst:E2} ({worstRelative:E2} relative to max(1, |logit|))");
            Assert.True(differing == 0, $"{differing} batched logits differ from a sequence alone, by up to {worst} ({worstRelative} relative)");
        });
    }

    [Fact]
    public void RejectedCallsLeaveEverySlotUnchanged()
    {
        WithModel("stories260K", model =>
        {
            int vocab = model.Config.VocabSize;
            using var batch = new BatchedInference(model, 4, 64);
            var logits = new float[4 * vocab];
            batch.Evaluate([new(0, Prompt(new Random(1), 10)), new(2, Prompt(new Random(2), 60))], logits);
            int[] lengths = [10, 0, 60, 0];

            void Rejected<T>(BatchEntry[] entries, int logitRows = 4) where T : Exception
            {
                var exception = Assert.ThrowsAny<T>(() => batch.Evaluate(entries, new float[logitRows * vocab]));
                output.WriteLine(exception.Message);
                Assert.Equal(lengths, Enumerable.Range(0, 4).Select(batch.Length));
            }

            int[] three = [5, 6, 7];
            Rejected<ArgumentOutOfRangeException>([new(1, three), new(0, three), new(4, three)]);
            Rejected<ArgumentOutOfRangeException>([new(1, three), new(-1, three)]);
            Rejected<ArgumentException>([new(1, three), new(3, three), new(1, three)]);
            Rejected<ArgumentException>([new(1, three), new(3, Array.Empty<int>())]);
            Rejected<ArgumentOutOfRangeException>([new(1, three), new(0, new[] { 5, vocab })]);
            Rejected<ArgumentOutOfRangeException>([new(1, three), new(0, new[] { -1 })]);
            Rejected<InvalidOperationException>([new(1, three), new(0, three), new(2, three.Concat(three).ToArray())]);
            Rejected<ArgumentException>([new(1, three), new(0, three)], logitRows: 1);
            Assert.Throws<ArgumentOutOfRangeException>(() => batch.Truncate(0, 11));
            Assert.Throws<ArgumentOutOfRangeException>(() => batch.Truncate(4, 0));
            Assert.Throws<ArgumentOutOfRangeException>(() => batch.Length(4));

            // The caches were not written either: continuing gives what the sequences give alone.
            int[] next = [9, 8, 7, 6];
            batch.Evaluate([new(2, next[..1]), new(0, next), new(1, next)], logits);
            Assert.Equal([14, 4, 61, 0], Enumerable.Range(0, 4).Select(batch.Length));
            int[][] sequences = [[.. Prompt(new Random(2), 60), 9], [.. Prompt(new Random(1), 10), .. next], next];
            for (int i = 0; i < 3; i++)
            {
                using var session = new InferenceSession(model, 64);
                var expected = session.Evaluate(sequences[i]);
                AssertClose(expected, logits.AsSpan(i * vocab, vocab), $"entry {i}");
            }

            // A slot rewound part way continues from there.
            batch.Truncate(0, 7);
            batch.Evaluate([new(0, next[..2])], logits);
            using (var session = new InferenceSession(model, 64))
            {
                var expected = session.Evaluate([.. Prompt(new Random(1), 10)[..7], .. next[..2]]);
                AssertClose(expected, logits.AsSpan(0, vocab), "rewound slot");
            }

            batch.Dispose();
            Assert.Throws<ObjectDisposedException>(() => batch.Evaluate([new(0, three)], logits));
        });
    }

    [Fact]
    public void CallsLargerThanOneStepAreSplit()
    {
        WithModel("stories260K", model =>
        {
            int vocab = model.Config.VocabSize;
            using var batch = new BatchedInference(model, 3, 512);
            int step = batch.MaxTokensPerStep;
            // Entry 1 spans three steps; entries 0 and 2 share steps with it.
            int[][] prompts = [Prompt(new Random(3), 20), Prompt(new Random(4), 2 * step + 5), Prompt(new Random(5), 30)];
            var logits = new float[3 * vocab];
            batch.Evaluate(prompts.Select((p, i) => new BatchEntry(i, p)).ToArray(), logits);
            for (int i = 0; i < 3; i++)
            {
                Assert.Equal(prompts[i].Length, batch.Length(i));
                using var session = new InferenceSession(model, 512);
                AssertClose(session.Evaluate(prompts[i]), logits.AsSpan(i * vocab, vocab), $"entry {i}");
            }
        });
    }

    [Fact]
    public void SteadyStateStepsAllocateNothing()
    {
        WithModel("stories260K", model =>
        {
            const int slots = 8;
            int vocab = model.Config.VocabSize;
            using var batch = new BatchedInference(model, slots, 256);
            var logits = new float[slots * vocab];
            var tokens = Enumerable.Range(0, slots).Select(i => new[] { 1 + i }).ToArray();
            var entries = tokens.Select((t, i) => new BatchEntry(i, t)).ToArray();
            // A prefill chunk beside the decode steps, so both kinds of segment are in the measured steps.
            var prompt = Prompt(new Random(9), 20);
            for (int step = 0; step < 3; step++) batch.Evaluate(entries, logits);
            entries[3] = new BatchEntry(3, prompt);
            batch.Evaluate(entries, logits);
            SteadyStateAllocation.AssertNone("5 batched steps", () =>
            {
                for (int step = 0; step < 5; step++)
                {
                    entries[3] = new BatchEntry(3, step == 2 ? prompt : tokens[3]);
                    batch.Evaluate(entries, logits);
                }
            });
        });
    }

    private static Transcript RunAlone(TransformerModel model, Request request)
    {
        int vocab = model.Config.VocabSize;
        var transcript = new Transcript();
        using var session = new InferenceSession(model, Context);
        var all = new float[request.Prompt.Length * vocab];
        session.EvaluateAll(request.Prompt, all);
        for (int p = 0; p < request.Prompt.Length; p++) transcript.Logits[p + 1] = all[(p * vocab)..((p + 1) * vocab)];
        var last = transcript.Logits[request.Prompt.Length];
        for (int g = 0; g < request.Generate; g++)
        {
            int token = ArgMax(last);
            transcript.Generated.Add(token);
            if (g == request.Generate - 1) break;
            last = session.Evaluate([token]).ToArray();
            transcript.Logits[session.Position] = last;
        }
        return transcript;
    }

    /// <summary>
    /// A scheduler in miniature: each call takes a random prefill chunk from sequences still reading their prompt and
    /// the next token from generating ones (some randomly sit a call out); finished sequences free their slot for the
    /// next waiting one.
    /// </summary>
    private static Transcript[] RunBatched(TransformerModel model, int slots, Request[] requests, Random random, out int calls, out int largestCall)
    {
        int vocab = model.Config.VocabSize;
        var transcripts = requests.Select(_ => new Transcript()).ToArray();
        var occupant = Enumerable.Repeat(-1, slots).ToArray();
        var fed = new int[requests.Length];
        int waiting = 0, finished = 0;
        calls = largestCall = 0;
        using var batch = new BatchedInference(model, slots, Context);
        var logits = new float[slots * vocab];
        var entries = new List<BatchEntry>();
        var owners = new List<int>();

        while (finished < requests.Length)
        {
            for (int slot = 0; slot < slots; slot++)
                if (occupant[slot] < 0 && waiting < requests.Length)
                {
                    Assert.Equal(0, batch.Length(slot));
                    occupant[slot] = waiting++;
                }

            entries.Clear();
            owners.Clear();
            foreach (int slot in Enumerable.Range(0, slots).OrderBy(_ => random.Next()))
            {
                int r = occupant[slot];
                if (r < 0 || (entries.Count > 0 && random.Next(4) == 0)) continue;
                var request = requests[r];
                int[] tokens = fed[r] < request.Prompt.Length
                    ? request.Prompt[fed[r]..Math.Min(request.Prompt.Length, fed[r] + random.Next(1, 24))]
                    : [transcripts[r].Generated[^1]];
                entries.Add(new BatchEntry(slot, tokens));
                owners.Add(r);
            }

            batch.Evaluate(entries.ToArray(), logits);
            calls++;
            largestCall = Math.Max(largestCall, entries.Sum(e => e.Tokens.Length));

            for (int i = 0; i < entries.Count; i++)
            {
                int r = owners[i], slot = entries[i].Slot;
                fed[r] += entries[i].Tokens.Length;
                Assert.Equal(fed[r], batch.Length(slot));
                var row = logits[(i * vocab)..((i + 1) * vocab)];
                transcripts[r].Logits[fed[r]] = row;
                if (fed[r] < requests[r].Prompt.Length) continue;
                transcripts[r].Generated.Add(ArgMax(row));
                if (transcripts[r].Generated.Count == requests[r].Generate)
                {
                    batch.Truncate(slot, 0);
                    occupant[slot] = -1;
                    finished++;
                }
            }
        }
        return transcripts;
    }

    private static void WithModel(string name, Action<TransformerModel> test)
    {
        if (name == "stories260K")
        {
            using var stories = TransformerModel.Load(SharedData.PathTo("models/stories260K/stories260K.gguf"));
            test(stories);
            return;
        }
        var path = Synthetic[name].Build().WriteTemp();
        try
        {
            using var model = TransformerModel.Load(path);
            test(model);
        }
        finally
        {
            File.Delete(path);
        }
    }

    private static int[] Prompt(Random random, int length) =>
        Enumerable.Range(0, length).Select(i => i == 0 ? 1 : random.Next(3, 512)).ToArray();

    private static int ArgMax(ReadOnlySpan<float> values)
    {
        int best = 0;
        for (int i = 1; i < values.Length; i++)
            if (values[i] > values[best]) best = i;
        return best;
    }

    private static void AssertClose(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(BitConverter.SingleToInt32Bits(expected[i]) == BitConverter.SingleToInt32Bits(actual[i]),
                $"{what}: logit {i} is {actual[i]}, alone {expected[i]}");
    }
}
