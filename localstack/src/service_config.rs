//! Per-service endpoints supplied through the SDK's service configuration, the same
//! mechanism that reads `AWS_ENDPOINT_URL_<SERVICE>`.

use aws_config::SdkConfig;
use aws_types::service_config::{LoadServiceConfig, ServiceConfigKey};

/// Answers the endpoint-URL key for Kinesis and DynamoDB with the emulators' endpoints
/// and everything else from the configuration that was loaded.
#[derive(Debug)]
pub(crate) struct EmulatorEndpoints {
    pub(crate) kinesis: Option<String>,
    pub(crate) dynamodb: Option<String>,
    /// The loaded configuration, whose own service configuration answers the rest.
    pub(crate) fallback: Option<SdkConfig>,
}

impl LoadServiceConfig for EmulatorEndpoints {
    fn load_config(&self, key: ServiceConfigKey<'_>) -> Option<String> {
        if key.env() == "AWS_ENDPOINT_URL" {
            let local = match key.service_id() {
                "Kinesis" => self.kinesis.clone(),
                "DynamoDB" => self.dynamodb.clone(),
                _ => None,
            };
            if local.is_some() {
                return local;
            }
        }
        self.fallback
            .as_ref()
            .and_then(SdkConfig::service_config)
            .and_then(|config| config.load_config(key))
    }
}
