using System.Collections.Concurrent;
using System.Text;
using System.Text.RegularExpressions;

namespace Loom.Models.Tokenizers;

/// <summary>
/// Splits text into the words BPE runs on, the way llama.cpp's unicode_regex_split does: a list of split rules is applied
/// in turn, each one cutting every piece left by the previous rules (matches and the text between them both become pieces).
/// The GPT-2 and Llama-3 style patterns use hand-written scanners (as llama.cpp does); the others run as regular expressions
/// over llama.cpp's "collapsed" text, where every non-ASCII code point is replaced by one stand-in character per Unicode
/// class, so \p{L}, \p{N}, ... behave exactly as in llama.cpp rather than by .NET's own category tables.
/// </summary>
internal sealed class PreTokenizer
{
    private readonly SplitRule[] _rules;
    /// <summary>Compiled patterns, one per distinct pattern of the fixed tables below.</summary>
    private static readonly ConcurrentDictionary<string, Regex> RegexCache = new();

    private PreTokenizer(params SplitRule[] rules) => _rules = rules;

    /// <summary>Splits code points into words; returns the word lengths in code points, in order.</summary>
    public List<int> Split(int[] codepoints)
    {
        var pieces = new List<int> { codepoints.Length };
        if (codepoints.Length == 0) return pieces;
        var next = new List<int>();
        foreach (var rule in _rules)
        {
            next.Clear();
            rule.Split(codepoints, pieces, next);
            (pieces, next) = (next, pieces);
        }
        return pieces;
    }

    // ---- the pre-tokenizers llama.cpp names in tokenizer.ggml.pre (built on first use) ----

    public static PreTokenizer Gpt2 => field ??= new(new Gpt2Scanner());
    public static PreTokenizer Llama3 => field ??= new(new Llama3Scanner(3));
    public static PreTokenizer Qwen2 => field ??= new(new Llama3Scanner(1));

    public static PreTokenizer Default => field ??= new(
        Collapsed(@"[\p{P}\$\+<=>\^~\|]+"), new Gpt2Scanner(), Collapsed(@"\p{N}+"), Wide("[0-9][0-9][0-9]"));

    public static PreTokenizer Falcon => field ??= new(
        Collapsed(@"[\p{P}\$\+<=>\^~\|`]+"), new Gpt2Scanner(), Wide("[0-9][0-9][0-9]"));

    public static PreTokenizer StarCoder => field ??= new(Collapsed(@"\p{N}"), new Gpt2Scanner());

    public static PreTokenizer DeepSeekLlm => field ??= new(
        Wide(@"[\r\n]"),
        // cased letters (Lu, Ll, Lt) as the tokenizer.json lists them, written as escapes so no editor can normalize them
        Wide(@"\s?[\u0041-\u005A\u0061-\u007A\u00B5\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u01BA\u01BC-\u01BF\u01C4-\u0293\u0295-\u02AF\u0370-\u0373\u0376-\u0377\u037B-\u037D\u037F\u0386\u0388-\u038A\u038C\u038E-\u03A1\u03A3-\u03F5\u03F7-\u0481\u048A-\u052F\u0531-\u0556\u10A0-\u10C5\u13A0-\u13F5\u13F8-\u13FD\u1C90-\u1CBA\u1CBD-\u1CBF\u1D00-\u1D2B\u1D6B-\u1D77\u1D79-\u1D9A\u1E00-\u1F15\u1F18-\u1F1D\u1F20-\u1F45\u1F48-\u1F4D\u1F50-\u1F57\u1F59\u1F5B\u1F5D\u1F5F-\u1F7D\u1F80-\u1FB4\u1FB6-\u1FBC\u1FBE\u1FC2-\u1FC4\u1FC6-\u1FCC\u1FD0-\u1FD3\u1FD6-\u1FDB\u1FE0-\u1FEC\u1FF2-\u1FF4\u1FF6-\u1FFC\u2102\u2107\u210A-\u2113\u2115\u2119-\u211D\u2124\u2126\u2128\u212A-\u212D\u212F-\u2134\u2139\u213C-\u213F\u2145-\u2149\u214E\u2183-\u2184\u2C00-\u2C7B\u2C7E-\u2CE4\u2CEB-\u2CEE\u2CF2-\u2CF3\uA640-\uA66D\uA680-\uA69B\uA722-\uA76F\uA771-\uA787\uA78B-\uA78E\uAB70-\uABBF\uFB00-\uFB06\uFB13-\uFB17\uFF21-\uFF3A\uFF41-\uFF5A\uFDD1]+",
            [(0x10400, 0x1044F), (0x104B0, 0x104D3), (0x104D8, 0x104FB), (0x10C80, 0x10CB2), (0x10CC0, 0x10CF2), (0x118A0, 0x118DF), (0x1E900, 0x1E943)]),
        Wide(@"\s?[!-/:-~！-／：-～‘-‟　-。]+"),
        Wide(@"\s+\z"),
        Wide("[一-龥ࠀ-一가-퟿]+"),
        Collapsed(@"\p{N}+"));

    public static PreTokenizer DeepSeekCoder => field ??= new(
        Wide(@"[\r\n]"), Collapsed(@"\s?\p{L}+"), Collapsed(@"\s?\p{P}+"), Wide("[一-龥ࠀ-一가-퟿]+"), Collapsed(@"\p{N}"));

    public static PreTokenizer DeepSeek3 => field ??= new(
        Collapsed(@"\p{N}{1,3}"),
        Wide("[一-龥぀-ゟ゠-ヿ]+"),
        Collapsed(@"[!""#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"));

    public static PreTokenizer Bloom => field ??= new(Wide(@" ?[^(\s|.,!?…。，、।۔،)]+"));

    public static PreTokenizer Viking => field ??= new(Wide(@" ?[^(\s|.,!?…。，、।۔،)]+"), Collapsed(@"\p{N}"));

    public static PreTokenizer BailingMoe => field ??= new(
        Collapsed(@"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"));

    public static PreTokenizer SeedCoder => field ??= new(
        Collapsed(@"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"));

    // ---- rules ----

    private abstract class SplitRule
    {
        /// <summary>Cuts each piece of <paramref name="pieces"/> (lengths over <paramref name="cpts"/>) and appends the new lengths.</summary>
        public abstract void Split(int[] cpts, List<int> pieces, List<int> output);
    }

    /// <summary>Emits the piece lengths of one chunk as a scanner advances through it.</summary>
    private struct PieceWriter(List<int> output, int start)
    {
        private int _previousEnd = start;

        public int EndAt(int end)
        {
            int length = end - _previousEnd;
            if (length > 0) output.Add(length);
            _previousEnd = end;
            return length;
        }
    }

    /// <summary>'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ scanned by hand, as llama.cpp does.</summary>
    private sealed class Gpt2Scanner : SplitRule
    {
        public override void Split(int[] cpts, List<int> pieces, List<int> output)
        {
            int start = 0;
            foreach (int length in pieces)
            {
                int begin = start, end = start + length;
                start = end;
                int Cpt(int p) => p >= begin && p < end ? cpts[p] : -1;
                UnicodeClass Class(int p) => p >= begin && p < end ? UnicodeClasses.Of(cpts[p]) : UnicodeClass.None;
                bool Space(int p) => p >= begin && p < end && UnicodeClasses.IsWhitespace(cpts[p]);
                // [^\s\p{L}\p{N}] as llama.cpp tests it: a code point inside the chunk that is neither whitespace, letter nor number
                bool Other(int p) => p >= begin && p < end && !UnicodeClasses.IsWhitespace(cpts[p]) && (UnicodeClasses.Of(cpts[p]) & (UnicodeClass.Letter | UnicodeClass.Number)) == 0;

                var writer = new PieceWriter(output, begin);
                for (int pos = begin; pos < end;)
                {
                    int cpt = cpts[pos];
                    if (cpt == '\'' && pos + 1 < end)
                    {
                        int next = cpts[pos + 1];
                        if (next is 's' or 't' or 'm' or 'd') { pos += writer.EndAt(pos + 2); continue; }
                        if (pos + 2 < end)
                        {
                            int next2 = cpts[pos + 2];
                            if ((next == 'r' && next2 == 'e') || (next == 'v' && next2 == 'e') || (next == 'l' && next2 == 'l')) { pos += writer.EndAt(pos + 3); continue; }
                        }
                    }

                    int lead = cpt == ' ' ? pos + 1 : pos; // the optional leading space
                    var leadClass = Class(lead);
                    if (!Space(lead) && (leadClass & UnicodeClass.Letter) != 0)
                    {
                        pos = lead;
                        while (!Space(pos) && (Class(pos) & UnicodeClass.Letter) != 0) pos++;
                        writer.EndAt(pos);
                        continue;
                    }
                    if (!Space(lead) && (leadClass & UnicodeClass.Number) != 0)
                    {
                        pos = lead;
                        while (!Space(pos) && (Class(pos) & UnicodeClass.Number) != 0) pos++;
                        writer.EndAt(pos);
                        continue;
                    }
                    if (Other(lead))
                    {
                        pos = lead;
                        while (Other(pos)) pos++;
                        writer.EndAt(pos);
                        continue;
                    }

                    int spaces = 0;
                    while (Space(pos + spaces)) spaces++;
                    if (spaces > 1 && Cpt(pos + spaces) != -1) { pos += spaces - 1; writer.EndAt(pos); continue; } // \s+(?!\S)
                    if (spaces > 0) { pos += spaces; writer.EndAt(pos); continue; }
                    writer.EndAt(++pos);
                }
            }
        }
    }

    /// <summary>
    /// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,n}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
    /// scanned by hand: n = 3 for Llama 3, n = 1 for Qwen 2.
    /// </summary>
    private sealed class Llama3Scanner(int maxDigits) : SplitRule
    {
        public override void Split(int[] cpts, List<int> pieces, List<int> output)
        {
            int start = 0;
            foreach (int length in pieces)
            {
                int begin = start, end = start + length;
                start = end;
                int Cpt(int p) => p >= begin && p < end ? cpts[p] : -1;
                bool Space(int p) => p >= begin && p < end && UnicodeClasses.IsWhitespace(cpts[p]);
                bool Letter(int p) => p >= begin && p < end && !UnicodeClasses.IsWhitespace(cpts[p]) && (UnicodeClasses.Of(cpts[p]) & UnicodeClass.Letter) != 0;
                bool Number(int p) => p >= begin && p < end && !UnicodeClasses.IsWhitespace(cpts[p]) && (UnicodeClasses.Of(cpts[p]) & UnicodeClass.Number) != 0;
                bool Other(int p) => p >= begin && p < end && !Space(p) && !Letter(p) && !Number(p);

                var writer = new PieceWriter(output, begin);
                for (int pos = begin; pos < end;)
                {
                    int cpt = cpts[pos];
                    if (cpt == '\'' && pos + 1 < end)
                    {
                        int next = AsciiLower(cpts[pos + 1]);
                        if (next is 's' or 't' or 'm' or 'd') { pos += writer.EndAt(pos + 2); continue; }
                        if (pos + 2 < end)
                        {
                            int next2 = AsciiLower(cpts[pos + 2]);
                            if ((next == 'r' && next2 == 'e') || (next == 'v' && next2 == 'e') || (next == 'l' && next2 == 'l')) { pos += writer.EndAt(pos + 3); continue; }
                        }
                    }

                    // [^\r\n\p{L}\p{N}]?\p{L}+
                    if (!(cpt == '\r' || cpt == '\n' || Number(pos)) && (Letter(pos) || Letter(pos + 1)))
                    {
                        pos++;
                        while (Letter(pos)) pos++;
                        writer.EndAt(pos);
                        continue;
                    }

                    // \p{N}{1,n}
                    if (Number(pos))
                    {
                        int groupStart = pos;
                        while (Number(pos))
                        {
                            if (++pos - groupStart >= maxDigits) { writer.EndAt(pos); groupStart = pos; }
                        }
                        writer.EndAt(pos);
                        continue;
                    }

                    // <space>?[^\s\p{L}\p{N}]+[\r\n]*
                    int lead = cpt == ' ' ? pos + 1 : pos;
                    if (Other(lead))
                    {
                        pos = lead;
                        while (Other(pos)) pos++;
                        while (Cpt(pos) is '\r' or '\n') pos++;
                        writer.EndAt(pos);
                        continue;
                    }

                    int spaces = 0, lastLineBreakEnd = 0;
                    while (Space(pos + spaces))
                    {
                        if (cpts[pos + spaces] is '\r' or '\n') lastLineBreakEnd = pos + spaces + 1;
                        spaces++;
                    }
                    if (lastLineBreakEnd > 0) { pos = lastLineBreakEnd; writer.EndAt(pos); continue; } // \s*[\r\n]+
                    if (spaces > 1 && Cpt(pos + spaces) != -1) { pos += spaces - 1; writer.EndAt(pos); continue; } // \s+(?!\S)
                    if (spaces > 0) { pos += spaces; writer.EndAt(pos); continue; }
                    writer.EndAt(++pos);
                }
            }
        }

        private static int AsciiLower(int c) => c is >= 'A' and <= 'Z' ? c + 32 : c;
    }

    private static Regex Compile(string pattern) =>
        RegexCache.GetOrAdd(pattern, p => new Regex(p, RegexOptions.CultureInvariant | RegexOptions.Compiled));

    /// <summary>A pattern using \p{L}/\p{N}/\p{P}/\p{M}/\p{S}, run over llama.cpp's collapsed text.</summary>
    private static SplitRule Collapsed(string pattern) => new RegexRule(Compile(CollapsePattern(pattern)), collapsed: true, []);

    /// <summary>A pattern without Unicode classes, run over the code points themselves (non-ASCII whitespace read as \v, as llama.cpp does).</summary>
    private static SplitRule Wide(string pattern, (int First, int Last)[]? astralInClass = null) =>
        new RegexRule(Compile(pattern), collapsed: false, astralInClass ?? []);

    /// <summary>The stand-in characters of the collapsed text (llama.cpp uses the bytes 0xD0..0xD5).</summary>
    private const char CollapsedOther = '\u00D0', CollapsedNumber = '\u00D1', CollapsedLetter = '\u00D2',
        CollapsedPunctuation = '\u00D3', CollapsedMark = '\u00D4', CollapsedSymbol = '\u00D5', CollapsedWhitespace = '\u000B';

    /// <summary>Stand-ins for code points above U+FFFF in wide text, which .NET patterns cannot name: one for those inside the rule's class, one for the rest.</summary>
    private const char AstralOutside = '\uFDD0', AstralInside = '\uFDD1';

    /// <summary>Rewrites \p{X} for the collapsed text: the class's stand-in plus its ASCII members, bracketed unless already inside [].</summary>
    private static string CollapsePattern(string pattern)
    {
        var result = new StringBuilder(pattern.Length * 2);
        bool inside = false;
        for (int i = 0; i < pattern.Length; i++)
        {
            char c = pattern[i];
            if (c == '[' && (i == 0 || pattern[i - 1] != '\\')) { inside = true; result.Append(c); continue; }
            if (inside && c == ']' && pattern[i - 1] != '\\') { inside = false; result.Append(c); continue; }
            if (c == '\\' && i + 4 < pattern.Length && pattern[i + 1] == 'p' && pattern[i + 2] == '{' && pattern[i + 4] == '}')
            {
                string? members = pattern[i + 3] switch
                {
                    'N' => $@"\u{(int)CollapsedNumber:X4}0-9",
                    'L' => $@"\u{(int)CollapsedLetter:X4}A-Za-z",
                    'P' => $@"\u{(int)CollapsedPunctuation:X4}!-#%-*,-/:-;?-@\[-\]_\{{\}}",
                    'M' => $@"\u{(int)CollapsedMark:X4}",
                    'S' => $@"\u{(int)CollapsedSymbol:X4}\$\+<->\^`\|",
                    _ => null,
                };
                if (members is not null)
                {
                    result.Append(inside ? members : "[" + members + "]");
                    i += 4;
                    continue;
                }
            }
            result.Append(c);
        }
        return result.ToString();
    }

    private sealed class RegexRule(Regex regex, bool collapsed, (int First, int Last)[] astralInClass) : SplitRule
    {
        public override void Split(int[] cpts, List<int> pieces, List<int> output)
        {
            // one char per code point, so match positions are code point positions
            var text = string.Create(cpts.Length, (cpts, collapsed, astralInClass), static (span, state) =>
            {
                for (int i = 0; i < span.Length; i++) span[i] = state.collapsed ? CollapseChar(state.cpts[i]) : WideChar(state.cpts[i], state.astralInClass);
            });
            int start = 0;
            foreach (int length in pieces)
            {
                int matchedEnd = 0;
                foreach (var match in regex.EnumerateMatches(text.AsSpan(start, length)))
                {
                    if (match.Index > matchedEnd) output.Add(match.Index - matchedEnd);
                    output.Add(match.Length);
                    matchedEnd = match.Index + match.Length;
                }
                if (matchedEnd < length) output.Add(length - matchedEnd);
                start += length;
            }
        }

        private static char CollapseChar(int cpt)
        {
            if (cpt < 128) return (char)cpt;
            if (UnicodeClasses.IsWhitespace(cpt)) return CollapsedWhitespace;
            return UnicodeClasses.Of(cpt) switch
            {
                UnicodeClass.Number => CollapsedNumber,
                UnicodeClass.Letter => CollapsedLetter,
                UnicodeClass.Punctuation => CollapsedPunctuation,
                UnicodeClass.Mark => CollapsedMark,
                UnicodeClass.Symbol => CollapsedSymbol,
                _ => CollapsedOther,
            };
        }

        private static char WideChar(int cpt, (int First, int Last)[] astralInClass)
        {
            if (cpt > 0x7F && UnicodeClasses.IsWhitespace(cpt)) return CollapsedWhitespace;
            if (cpt < 0x10000) return (char)cpt;
            foreach (var (first, last) in astralInClass)
                if (cpt >= first && cpt <= last) return AstralInside;
            return AstralOutside;
        }
    }
}
