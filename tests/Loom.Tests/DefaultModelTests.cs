using Loom.Cli;
using Loom.Inference;
using Loom.Inference.Chat;
using Loom.Inference.Generation;
using Loom.Inference.Sampling;
using Loom.Models.Architectures;

namespace Loom.Tests;

/// <summary>The committed default model (scripts/default-model/train.sh) as the README describes it.</summary>
public class DefaultModelTests
{
    [Fact]
    public void IsTheDocumentedLlamaWithItsOwnChatMlTokenizer()
    {
        using var model = TransformerModel.Load(LoomCli.DefaultModelPath);
        var c = model.Config;
        Assert.Equal((4096, 256, 6, 8, 4, 704, 256), (c.VocabSize, c.EmbeddingLength, c.LayerCount, c.HeadCount, c.HeadCountKv, c.FeedForwardLength, c.ContextLength));
        Assert.Equal(ChatTemplateFamily.ChatMl, ChatTemplate.Detect(c.ChatTemplate)!.Family);
        Assert.Equal([0, 1], model.Tokenizer.Encode("<|im_start|>", addSpecial: true, parseSpecial: true));
        Assert.Equal(2, model.Tokenizer.EotId);
    }

    /// <summary>Stage 2 taught the question → answer → &lt;|im_end|&gt; turn: greedy answers to seed questions end on their own.</summary>
    [Fact]
    public void AnswersSeedQuestionsThroughItsTemplateAndEndsTheTurn()
    {
        using var model = TransformerModel.Load(LoomCli.DefaultModelPath);
        using var session = new InferenceSession(model);
        var generator = Generator.ForModel(model, session);
        Assert.NotNull(generator.Template);
        string[] questions = File.ReadAllLines(Path.Combine(SharedData.RepoRoot, "data", "prompts", "seed.txt")).Take(3).ToArray();
        foreach (string question in questions)
        {
            var result = generator.Generate(question, PromptKind.Question, new GenerationOptions { MaxNewTokens = 128, Sampling = SamplerOptions.Greedy });
            Assert.Equal(FinishReason.EndOfGeneration, result.FinishReason);
            Assert.True(result.Output.Split(' ').Length >= 10, $"'{question}' got only '{result.Output}'");
        }
    }
}
