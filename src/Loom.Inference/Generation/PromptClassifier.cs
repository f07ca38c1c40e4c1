namespace Loom.Inference.Generation;

/// <summary>How a prompt line is fed to the model.</summary>
public enum PromptKind
{
    /// <summary>A question or instruction: goes through the chat template when the model has one.</summary>
    Question,
    /// <summary>The opening of a sentence: continued as plain text.</summary>
    Continuation,
}

/// <summary>Tells questions/instructions from sentence openings in a prompts file.</summary>
public static class PromptClassifier
{
    // Interrogatives, auxiliaries that open yes/no questions, and imperative verbs that open instructions.
    private static readonly HashSet<string> QuestionWords = new(StringComparer.OrdinalIgnoreCase)
    {
        "what", "how", "why", "when", "where", "who", "whom", "whose", "which",
        "is", "are", "was", "were", "do", "does", "did", "can", "could", "should", "would", "will", "shall", "may", "might",
        "explain", "describe", "compare", "contrast", "define", "list", "summarize", "summarise", "outline", "discuss",
        "write", "give", "tell", "name", "show", "provide", "identify", "analyze", "analyse", "evaluate", "illustrate",
        "translate", "classify", "suggest", "please",
    };

    public static PromptKind Classify(string prompt)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        string text = prompt.Trim();
        if (text.EndsWith('?')) return PromptKind.Question;
        int end = 0;
        while (end < text.Length && char.IsLetter(text[end])) end++;
        return end > 0 && QuestionWords.Contains(text[..end]) ? PromptKind.Question : PromptKind.Continuation;
    }
}
