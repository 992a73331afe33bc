//! The rules classifier: extra rules from config first, in file order, then
//! the built-in multilingual keyword rules; first match wins, else `other`.

use regex::Regex;

use crate::config::RuleConfig;
use crate::domain::{Intent, IntentBy};

/// Built-in rules. Opt-out and opt-in are carrier keywords and must be the
/// whole message (with trailing punctuation), so "stop by tomorrow" is not
/// an opt-out; greetings may start a longer message.
const BUILT_IN: &[(&str, &str)] = &[
    (
        "opt_out",
        r"(?i)^\s*(stop|stopall|stop all|unsubscribe|cancel|end|quit|optout|opt out|opt-out|revoke|стоп|отписаться|отписка|baja|parar|para|alto|arr[eê]t|arreter|arrêter|desinscrire)\s*[.!]*\s*$",
    ),
    (
        "opt_in",
        r"(?i)^\s*(start|unstop|subscribe|resume|optin|opt in|opt-in|старт|подписаться|alta|reanudar)\s*[.!]*\s*$",
    ),
    (
        "help",
        r"(?i)^\s*(help|info|support|помощь|справка|ayuda|aide|ajuda|hilfe)\s*[.!?]*\s*$",
    ),
    (
        "affirmative",
        r"(?i)^\s*(yes|y|yeah|yep|yup|sure|ok|okay|confirm|confirmed|correct|да|ага|конечно|sí|si|claro|oui|ja|sim)\b[\s.!]*$",
    ),
    (
        "negative",
        r"(?i)^\s*(no|n|nope|nah|not now|нет|неа|non|nein|não|nao)\b[\s.!]*$",
    ),
    (
        "greeting",
        r"(?i)^\s*(hi|hello|hey|hiya|good (morning|afternoon|evening)|привет|здравствуйте|добрый день|hola|buenos d[ií]as|bonjour|salut|ol[aá]|oi|hallo|ciao)\b",
    ),
];

/// Confidence of a rule match; rules are exact keyword lists, so high.
const RULE_CONFIDENCE: f64 = 0.95;

#[derive(Debug, Clone)]
pub struct RulesClassifier {
    rules: Vec<(Regex, String)>,
}

impl RulesClassifier {
    /// Compiles the extra rules (validated by config already) and the
    /// built-in ones.
    pub fn new(extra: &[RuleConfig]) -> Result<Self, regex::Error> {
        let mut rules = Vec::with_capacity(extra.len() + BUILT_IN.len());
        for r in extra {
            rules.push((Regex::new(&r.pattern)?, r.intent.clone()));
        }
        for (label, pattern) in BUILT_IN {
            rules.push((Regex::new(pattern)?, (*label).to_string()));
        }
        Ok(Self { rules })
    }

    pub fn classify(&self, text: Option<&str>) -> Intent {
        let text = text.unwrap_or("");
        for (re, label) in &self.rules {
            if re.is_match(text) {
                return Intent {
                    label: label.clone(),
                    confidence: RULE_CONFIDENCE,
                    by: IntentBy::Rules,
                };
            }
        }
        Intent {
            label: "other".into(),
            confidence: 0.0,
            by: IntentBy::Rules,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(c: &RulesClassifier, t: &str) -> String {
        c.classify(Some(t)).label
    }

    #[test]
    fn built_in_rules_cover_the_spec_examples_in_several_languages() {
        let c = RulesClassifier::new(&[]).unwrap();
        for (text, want) in [
            ("STOP", "opt_out"),
            ("unsubscribe", "opt_out"),
            ("СТОП", "opt_out"),
            ("stop!", "opt_out"),
            ("START", "opt_in"),
            ("unstop", "opt_in"),
            ("HELP", "help"),
            ("info", "help"),
            ("YES", "affirmative"),
            ("да", "affirmative"),
            ("sí", "affirmative"),
            ("No", "negative"),
            ("нет", "negative"),
            ("Привет", "greeting"),
            ("hola amigo", "greeting"),
            ("Hello there", "greeting"),
            ("stop by tomorrow at 5?", "other"),
            ("what time is it", "other"),
            ("", "other"),
        ] {
            assert_eq!(label(&c, text), want, "{text:?}");
        }
        assert_eq!(c.classify(None).label, "other");
    }

    #[test]
    fn extra_rules_win_over_built_in_ones_in_file_order() {
        let c = RulesClassifier::new(&[
            RuleConfig {
                pattern: r"(?i)^\s*reschedule".into(),
                intent: "reschedule".into(),
            },
            RuleConfig {
                pattern: r"(?i)^stop".into(),
                intent: "custom_stop".into(),
            },
            RuleConfig {
                pattern: r"(?i)^stop".into(),
                intent: "never".into(),
            },
        ])
        .unwrap();
        assert_eq!(label(&c, "Reschedule please"), "reschedule");
        assert_eq!(label(&c, "STOP"), "custom_stop");
        assert_eq!(c.classify(Some("STOP")).by, IntentBy::Rules);
    }
}
