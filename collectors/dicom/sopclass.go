package dicom

// SOP classes (PS3.4, PS3.6 Annex A) that name the object of an event: storage classes
// for instances, query/retrieve models for queries, and the services the taxonomy
// singles out (worklist, storage commitment).

const (
	sopMWLFind     = "1.2.840.10008.5.1.4.31"     // Modality Worklist Information Model - FIND
	sopUPSPull     = "1.2.840.10008.5.1.4.34.6.3" // Unified Procedure Step - Pull (a worklist)
	sopUPSWatch    = "1.2.840.10008.5.1.4.34.6.2" // Unified Procedure Step - Watch
	sopStgCmtPush  = "1.2.840.10008.1.20.1"       // Storage Commitment Push Model
	sopStgCmtPushI = "1.2.840.10008.1.20.1.1"     // Storage Commitment Push Model SOP Instance
	sopMPPS        = "1.2.840.10008.3.1.2.3.3"    // Modality Performed Procedure Step
)

// sopClassNames are the names stored in Event.Object for the SOP classes a site sees
// most; any other SOP class UID is stored as the UID (UIDs of SOP classes are not PHI).
var sopClassNames = map[string]string{
	"1.2.840.10008.1.1":              "Verification",
	sopStgCmtPush:                    "Storage Commitment Push Model",
	sopStgCmtPushI:                   "Storage Commitment Push Model",
	sopMPPS:                          "Modality Performed Procedure Step",
	sopMWLFind:                       "Modality Worklist Information Model - FIND",
	sopUPSPull:                       "Unified Procedure Step - Pull",
	sopUPSWatch:                      "Unified Procedure Step - Watch",
	"1.2.840.10008.5.1.4.1.2.1.1":    "Patient Root Query/Retrieve Information Model - FIND",
	"1.2.840.10008.5.1.4.1.2.1.2":    "Patient Root Query/Retrieve Information Model - MOVE",
	"1.2.840.10008.5.1.4.1.2.1.3":    "Patient Root Query/Retrieve Information Model - GET",
	"1.2.840.10008.5.1.4.1.2.2.1":    "Study Root Query/Retrieve Information Model - FIND",
	"1.2.840.10008.5.1.4.1.2.2.2":    "Study Root Query/Retrieve Information Model - MOVE",
	"1.2.840.10008.5.1.4.1.2.2.3":    "Study Root Query/Retrieve Information Model - GET",
	"1.2.840.10008.5.1.4.1.1.1":      "Computed Radiography Image Storage",
	"1.2.840.10008.5.1.4.1.1.1.1":    "Digital X-Ray Image Storage - For Presentation",
	"1.2.840.10008.5.1.4.1.1.1.1.1":  "Digital X-Ray Image Storage - For Processing",
	"1.2.840.10008.5.1.4.1.1.1.2":    "Digital Mammography X-Ray Image Storage - For Presentation",
	"1.2.840.10008.5.1.4.1.1.1.2.1":  "Digital Mammography X-Ray Image Storage - For Processing",
	"1.2.840.10008.5.1.4.1.1.2":      "CT Image Storage",
	"1.2.840.10008.5.1.4.1.1.2.1":    "Enhanced CT Image Storage",
	"1.2.840.10008.5.1.4.1.1.3.1":    "Ultrasound Multi-frame Image Storage",
	"1.2.840.10008.5.1.4.1.1.4":      "MR Image Storage",
	"1.2.840.10008.5.1.4.1.1.4.1":    "Enhanced MR Image Storage",
	"1.2.840.10008.5.1.4.1.1.6.1":    "Ultrasound Image Storage",
	"1.2.840.10008.5.1.4.1.1.7":      "Secondary Capture Image Storage",
	"1.2.840.10008.5.1.4.1.1.11.1":   "Grayscale Softcopy Presentation State Storage",
	"1.2.840.10008.5.1.4.1.1.12.1":   "X-Ray Angiographic Image Storage",
	"1.2.840.10008.5.1.4.1.1.12.2":   "X-Ray Radiofluoroscopic Image Storage",
	"1.2.840.10008.5.1.4.1.1.13.1.3": "Breast Tomosynthesis Image Storage",
	"1.2.840.10008.5.1.4.1.1.20":     "Nuclear Medicine Image Storage",
	"1.2.840.10008.5.1.4.1.1.88.11":  "Basic Text SR Storage",
	"1.2.840.10008.5.1.4.1.1.88.22":  "Enhanced SR Storage",
	"1.2.840.10008.5.1.4.1.1.88.33":  "Comprehensive SR Storage",
	"1.2.840.10008.5.1.4.1.1.88.59":  "Key Object Selection Document Storage",
	"1.2.840.10008.5.1.4.1.1.88.67":  "X-Ray Radiation Dose SR Storage",
	"1.2.840.10008.5.1.4.1.1.104.1":  "Encapsulated PDF Storage",
	"1.2.840.10008.5.1.4.1.1.128":    "Positron Emission Tomography Image Storage",
	"1.2.840.10008.5.1.4.1.1.130":    "Enhanced PET Image Storage",
	"1.2.840.10008.5.1.4.1.1.481.1":  "RT Image Storage",
	"1.2.840.10008.5.1.4.1.1.481.2":  "RT Dose Storage",
	"1.2.840.10008.5.1.4.1.1.481.3":  "RT Structure Set Storage",
	"1.2.840.10008.5.1.4.1.1.481.5":  "RT Plan Storage",
	"1.2.840.10008.5.1.4.1.1.66":     "Raw Data Storage",
	"1.2.840.10008.5.1.4.1.1.77.1.6": "VL Whole Slide Microscopy Image Storage",
}

// sopClassName is the name of a SOP class UID, or the UID itself.
func sopClassName(uid string) string {
	if n, ok := sopClassNames[uid]; ok {
		return n
	}
	return uid
}

// objectRoles names ParticipantObjectTypeCodeRole values (PS3.15 A.5.1, RFC 3881 5.5.2)
// for Event.Object when no SOP class or study says more.
var objectRoles = map[string]string{
	"1": "Patient", "2": "Location", "3": "Report", "4": "Resource", "5": "MasterFile",
	"6": "User", "7": "List", "8": "Doctor", "9": "Subscriber", "10": "Guarantor",
	"11": "SecurityUser", "12": "SecurityGroup", "13": "SecurityResource",
	"14": "SecurityGranularity", "15": "Provider", "16": "DataDestination",
	"17": "DataRepository", "18": "Schedule", "19": "Customer", "20": "Job",
	"21": "JobStream", "22": "Table", "23": "RoutingCriteria", "24": "Query",
	"25": "DataSource", "26": "ProcessingElement",
}
