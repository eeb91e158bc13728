//! The event catalogue: one list of every `Payload` member and its fields,
//! from which the typed [`Event`], the payload walk of the specialised
//! verifier and the JSON rendering are generated.

use flatbuffers::WIPOffset;
use serde_json::{Map, Value};

use super::json::ToJson;
use super::{Envelope, EnvelopeError, PayloadOffset, walk};
use crate::fb;

/// Declares the event catalogue once: the typed [`Event`] enum, the
/// `WIPOffset -> PayloadOffset` conversions, and the JSON rendering of every
/// field. `tests::catalogue_matches_fbs` checks this list against the `.fbs`.
macro_rules! event_catalogue {
    ($( $variant:ident => $accessor:ident { $($field:ident = $vt:ident),* $(,)? } ),* $(,)?) => {
        /// A verified envelope's payload, typed. One variant per member of
        /// the `Payload` union.
        #[derive(Clone, Copy, Debug)]
        pub enum Event<'a> {
            $(
                #[doc = concat!("`", stringify!($variant), "`")]
                $variant(fb::$variant<'a>),
            )*
        }

        impl<'a> Event<'a> {
            /// The typed payload of `envelope`.
            ///
            /// Errors: [`EnvelopeError::MissingPayload`], or
            /// [`EnvelopeError::UnknownPayload`] for a union member added by a
            /// newer schema (never a panic).
            pub fn from_envelope(envelope: &Envelope<'a>) -> Result<Self, EnvelopeError> {
                match envelope.payload_type() {
                    $(
                        fb::Payload::$variant => envelope
                            .$accessor()
                            .map(Event::$variant)
                            .ok_or(EnvelopeError::MissingPayload),
                    )*
                    fb::Payload::NONE => Err(EnvelopeError::MissingPayload),
                    other => Err(EnvelopeError::UnknownPayload(other.0)),
                }
            }

            /// The union discriminant, i.e. the message type.
            pub fn message_type(&self) -> fb::Payload {
                match self {
                    $( Event::$variant(_) => fb::Payload::$variant, )*
                }
            }

            /// Every field of the event as a JSON object.
            pub fn to_json(&self) -> Value {
                match self {
                    $( Event::$variant(t) => t.to_json(), )*
                }
            }
        }

        /// Whether this build knows union member `kind` (and so verifies its table).
        pub(super) fn is_known_payload(kind: fb::Payload) -> bool {
            matches!(kind, $( fb::Payload::$variant )|*)
        }

        /// The specialised verifier's walk over the payload table of known
        /// member `kind` at `pos` (depth 2): `visit_table`, then every field
        /// the accessors read, each at its generated `VT_*` slot.
        pub(super) fn walk_payload(walk: &mut walk::Walk<'_>, kind: fb::Payload, pos: usize) -> walk::Step {
            match kind {
                $(
                    fb::Payload::$variant => {
                        use fb::$variant as T;
                        walk::walk_table!(walk, pos, 2, T { $($field = $vt),* })
                    }
                )*
                _ => Ok(()),
            }
        }

        /// The (slot, shape) of each of member `kind`'s fields, for the tests
        /// that build every event generically.
        #[cfg(test)]
        pub(super) fn payload_shapes(kind: fb::Payload) -> Vec<(u16, walk::Shape)> {
            match kind {
                $( fb::Payload::$variant => vec![$( (fb::$variant::$vt, walk::shape_of(fb::$variant::$field)) ),*], )*
                _ => Vec::new(),
            }
        }

        $(
            impl<'a> From<WIPOffset<fb::$variant<'a>>> for PayloadOffset {
                fn from(offset: WIPOffset<fb::$variant<'a>>) -> Self {
                    PayloadOffset::new(fb::Payload::$variant, offset.as_union_value())
                }
            }

            impl ToJson for fb::$variant<'_> {
                fn to_json(&self) -> Value {
                    let mut fields = Map::new();
                    $( fields.insert(stringify!($field).to_owned(), self.$field().to_json()); )*
                    Value::Object(fields)
                }
            }
        )*

        /// (union member, fields) in declaration order, for the catalogue test.
        #[cfg(test)]
        pub(crate) const CATALOGUE: &[(&str, &[&str])] = &[
            $( (stringify!($variant), &[$(stringify!($field)),*]), )*
        ];
    };
}

event_catalogue! {
    AgentSpawned => payload_as_agent_spawned {
        agent_id = VT_AGENT_ID, agent_type = VT_AGENT_TYPE, agent_version = VT_AGENT_VERSION, host = VT_HOST,
        pid = VT_PID, parent_agent_id = VT_PARENT_AGENT_ID, capabilities = VT_CAPABILITIES,
    },
    AgentPerformanceUpdated => payload_as_agent_performance_updated {
        agent_id = VT_AGENT_ID, window_start_ns = VT_WINDOW_START_NS, window_end_ns = VT_WINDOW_END_NS,
        messages_processed = VT_MESSAGES_PROCESSED, errors = VT_ERRORS, latency_p50_ns = VT_LATENCY_P50_NS,
        latency_p99_ns = VT_LATENCY_P99_NS, cpu_utilization_bp = VT_CPU_UTILIZATION_BP,
        memory_bytes = VT_MEMORY_BYTES, score_e8 = VT_SCORE_E8, realized_pnl_e8 = VT_REALIZED_PNL_E8,
    },
    AgentCapabilityEvolved => payload_as_agent_capability_evolved {
        agent_id = VT_AGENT_ID, capability = VT_CAPABILITY, previous_level = VT_PREVIOUS_LEVEL,
        new_level = VT_NEW_LEVEL, reason = VT_REASON,
    },
    AgentTerminated => payload_as_agent_terminated {
        agent_id = VT_AGENT_ID, reason = VT_REASON, detail = VT_DETAIL, exit_code = VT_EXIT_CODE,
        uptime_ns = VT_UPTIME_NS,
    },
    MeshFormed => payload_as_mesh_formed {
        mesh_id = VT_MESH_ID, topology = VT_TOPOLOGY, coordinator_agent_id = VT_COORDINATOR_AGENT_ID,
        member_agent_ids = VT_MEMBER_AGENT_IDS, purpose = VT_PURPOSE,
    },
    MeshTopologyChanged => payload_as_mesh_topology_changed {
        mesh_id = VT_MESH_ID, previous_topology = VT_PREVIOUS_TOPOLOGY, new_topology = VT_NEW_TOPOLOGY,
        joined_agent_ids = VT_JOINED_AGENT_IDS, left_agent_ids = VT_LEFT_AGENT_IDS, reason = VT_REASON,
    },
    MeshPerformanceImproved => payload_as_mesh_performance_improved {
        mesh_id = VT_MESH_ID, metric = VT_METRIC, previous_value_e8 = VT_PREVIOUS_VALUE_E8,
        new_value_e8 = VT_NEW_VALUE_E8, improvement_bp = VT_IMPROVEMENT_BP,
    },
    MeshDissolved => payload_as_mesh_dissolved {
        mesh_id = VT_MESH_ID, reason = VT_REASON, lifetime_ns = VT_LIFETIME_NS,
    },
    SystemConfigurationChanged => payload_as_system_configuration_changed {
        component = VT_COMPONENT, key = VT_KEY, previous_value = VT_PREVIOUS_VALUE, new_value = VT_NEW_VALUE,
        changed_by = VT_CHANGED_BY, config_version = VT_CONFIG_VERSION,
    },
    OptimizationCycleCompleted => payload_as_optimization_cycle_completed {
        cycle_id = VT_CYCLE_ID, started_at_ns = VT_STARTED_AT_NS, duration_ns = VT_DURATION_NS,
        parameters_changed = VT_PARAMETERS_CHANGED, objective_before_e8 = VT_OBJECTIVE_BEFORE_E8,
        objective_after_e8 = VT_OBJECTIVE_AFTER_E8,
    },
    EmergencyStateActivated => payload_as_emergency_state_activated {
        emergency_id = VT_EMERGENCY_ID, severity = VT_SEVERITY, reason = VT_REASON, triggered_by = VT_TRIGGERED_BY,
        affected_components = VT_AFFECTED_COMPONENTS,
    },
    RecoveryProcessInitiated => payload_as_recovery_process_initiated {
        recovery_id = VT_RECOVERY_ID, emergency_id = VT_EMERGENCY_ID, strategy = VT_STRATEGY,
        initiated_by = VT_INITIATED_BY, expected_duration_ns = VT_EXPECTED_DURATION_NS,
    },
    TradingSignalGenerated => payload_as_trading_signal_generated {
        signal_id = VT_SIGNAL_ID, symbol = VT_SYMBOL, side = VT_SIDE, confidence_e8 = VT_CONFIDENCE_E8,
        reference_price_e8 = VT_REFERENCE_PRICE_E8, target_price_e8 = VT_TARGET_PRICE_E8,
        stop_loss_price_e8 = VT_STOP_LOSS_PRICE_E8, timeframe = VT_TIMEFRAME, strategy = VT_STRATEGY,
        valid_until_ns = VT_VALID_UNTIL_NS,
    },
    RiskParametersUpdated => payload_as_risk_parameters_updated {
        account_id = VT_ACCOUNT_ID, symbol = VT_SYMBOL, max_position_e8 = VT_MAX_POSITION_E8,
        max_order_quantity_e8 = VT_MAX_ORDER_QUANTITY_E8, max_daily_loss_e8 = VT_MAX_DAILY_LOSS_E8,
        max_leverage_e8 = VT_MAX_LEVERAGE_E8, risk_per_trade_bp = VT_RISK_PER_TRADE_BP, reason = VT_REASON,
    },
    BreakerAgentTriggered => payload_as_breaker_agent_triggered {
        agent_id = VT_AGENT_ID, breaker = VT_BREAKER, severity = VT_SEVERITY, threshold_e8 = VT_THRESHOLD_E8,
        observed_e8 = VT_OBSERVED_E8, cooldown_ns = VT_COOLDOWN_NS, reason = VT_REASON,
    },
    BreakerSystemEmergency => payload_as_breaker_system_emergency {
        severity = VT_SEVERITY, reason = VT_REASON, triggered_by = VT_TRIGGERED_BY, halt_trading = VT_HALT_TRADING,
        cancel_open_orders = VT_CANCEL_OPEN_ORDERS, open_positions = VT_OPEN_POSITIONS,
    },
    PersonalityVarianceApplied => payload_as_personality_variance_applied {
        agent_id = VT_AGENT_ID, personality_id = VT_PERSONALITY_ID, signal_id = VT_SIGNAL_ID,
        order_id = VT_ORDER_ID, timing_delay_ns = VT_TIMING_DELAY_NS, size_variance_bp = VT_SIZE_VARIANCE_BP,
        price_variance_e8 = VT_PRICE_VARIANCE_E8, reason = VT_REASON,
    },
    ExecutionOrderPlaced => payload_as_execution_order_placed {
        order_id = VT_ORDER_ID, signal_id = VT_SIGNAL_ID, account_id = VT_ACCOUNT_ID, symbol = VT_SYMBOL,
        side = VT_SIDE, order_type = VT_ORDER_TYPE, time_in_force = VT_TIME_IN_FORCE, quantity_e8 = VT_QUANTITY_E8,
        limit_price_e8 = VT_LIMIT_PRICE_E8, stop_price_e8 = VT_STOP_PRICE_E8, venue = VT_VENUE,
    },
    ExecutionOrderFilled => payload_as_execution_order_filled {
        order_id = VT_ORDER_ID, venue_order_id = VT_VENUE_ORDER_ID, fill_id = VT_FILL_ID,
        account_id = VT_ACCOUNT_ID, symbol = VT_SYMBOL, side = VT_SIDE, fill_quantity_e8 = VT_FILL_QUANTITY_E8,
        fill_price_e8 = VT_FILL_PRICE_E8, cumulative_quantity_e8 = VT_CUMULATIVE_QUANTITY_E8,
        remaining_quantity_e8 = VT_REMAINING_QUANTITY_E8, commission_e8 = VT_COMMISSION_E8,
        commission_currency = VT_COMMISSION_CURRENCY, liquidity = VT_LIQUIDITY, filled_at_ns = VT_FILLED_AT_NS,
    },
    Heartbeat => payload_as_heartbeat {
        sequence = VT_SEQUENCE, interval_ns = VT_INTERVAL_NS, status = VT_STATUS,
    },
}
